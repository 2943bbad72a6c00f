# session-enricher: one image for every command (run, ingest, migrate,
# simulate-pbx, healthcheck). Build: docker build -t session-enricher .

# --- build ------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# No database at build time: queries are checked at run time and
# `sqlx::migrate!` only embeds migrations/.
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never

# Dependencies first, against placeholder sources: this layer is rebuilt only
# when Cargo.toml or Cargo.lock change. (Explicit targets in Cargo.toml, such
# as a [[bench]], would need their placeholder here too.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

COPY migrations migrations
COPY src src
# The placeholders' build outputs are newer than the copied sources: touch
# them so cargo rebuilds the crate itself.
# --strip-debug: 92 MB -> 19 MB; function names stay, so a panic's backtrace
# still says where (without line numbers).
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && strip --strip-debug -o /session-enricher target/release/session-enricher

# --- run --------------------------------------------------------------------
# glibc, libgcc, CA certificates and a non-root user; no shell, no curl.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /session-enricher /usr/local/bin/session-enricher
USER nonroot:nonroot
# The operations endpoint: /healthz, /readyz, /metrics (ENRICHER_HTTP_ADDR).
EXPOSE 9090
ENV ENRICHER_HTTP_ADDR=0.0.0.0:9090 LOG_FORMAT=json
# SIGTERM starts the graceful shutdown (ENRICHER_SHUTDOWN_TIMEOUT, 20 s by
# default): give `docker stop` a longer timeout than that (compose:
# stop_grace_period).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=4s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/session-enricher", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/session-enricher"]
CMD ["run"]
