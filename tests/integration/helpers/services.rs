//! Where the tests find Postgres and RabbitMQ, decided once per run: the
//! environment's URLs, else the local services, else containers started with
//! testcontainers. Also the URL surgery the harness needs (another database,
//! another address). Never creates a database or a queue.

use std::sync::OnceLock;
use std::time::Duration;

use testcontainers::runners::AsyncRunner;
use testcontainers::{ImageExt, ReuseDirective};
use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::rabbitmq::RabbitMq;

const LOCAL_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const LOCAL_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Containers started by the fallback are kept under these names and reused
/// by later runs (`docker rm -f` them to let go).
const POSTGRES_CONTAINER: &str = "session-enricher-test-postgres";
const RABBITMQ_CONTAINER: &str = "session-enricher-test-rabbitmq";

/// Where the tests find Postgres and RabbitMQ.
struct Services {
    database_url: String,
    amqp_url: String,
}

static SERVICES: OnceLock<Services> = OnceLock::new();

/// The Postgres server's URL (its `postgres` database): create test
/// databases through it.
pub fn database_url() -> String {
    services().database_url.clone()
}

/// The RabbitMQ URL every test connects to.
pub fn amqp_url() -> String {
    services().amqp_url.clone()
}

/// `DATABASE_URL` / `AMQP_URL` if set; else the local service if it accepts
/// connections; else, if Docker answers, a container started with
/// testcontainers (the first run pulls and starts it, later runs reuse it).
fn services() -> &'static Services {
    SERVICES.get_or_init(|| {
        let database_url = std::env::var("DATABASE_URL")
            .ok()
            .or_else(|| reachable("127.0.0.1:5432").then(|| LOCAL_DATABASE_URL.into()));
        let amqp_url = std::env::var("AMQP_URL")
            .ok()
            .or_else(|| reachable("127.0.0.1:5672").then(|| LOCAL_AMQP_URL.into()));
        if let (Some(database_url), Some(amqp_url)) = (&database_url, &amqp_url) {
            return Services {
                database_url: database_url.clone(),
                amqp_url: amqp_url.clone(),
            };
        }
        assert!(
            docker_answers(),
            "Postgres (127.0.0.1:5432) or RabbitMQ (127.0.0.1:5672) is not reachable and \
             Docker is not available: start the local services (see README) or Docker"
        );
        let (database_url, amqp_url) = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for starting containers");
            runtime.block_on(async move {
                let database_url = match database_url {
                    Some(url) => url,
                    None => start_postgres().await,
                };
                let amqp_url = match amqp_url {
                    Some(url) => url,
                    None => start_rabbitmq().await,
                };
                (database_url, amqp_url)
            })
        })
        .join()
        .expect("starting the containers panicked");
        Services {
            database_url,
            amqp_url,
        }
    })
}

fn reachable(addr: &str) -> bool {
    addr.parse().is_ok_and(|addr| {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
    })
}

fn docker_answers() -> bool {
    std::process::Command::new("docker")
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn start_postgres() -> String {
    let container = Postgres::default()
        .with_tag("16-alpine")
        .with_container_name(POSTGRES_CONTAINER)
        .with_reuse(ReuseDirective::Always)
        .start()
        .await
        .expect("start a Postgres container");
    let host = container.get_host().await.expect("the container's host");
    let port = container
        .get_host_port_ipv4(5432)
        .await
        .expect("Postgres's mapped port");
    format!("postgres://postgres:postgres@{host}:{port}/postgres")
}

async fn start_rabbitmq() -> String {
    let container = RabbitMq::default()
        .with_tag("3.13-management")
        .with_container_name(RABBITMQ_CONTAINER)
        .with_reuse(ReuseDirective::Always)
        .start()
        .await
        .expect("start a RabbitMQ container");
    let host = container.get_host().await.expect("the container's host");
    let port = container
        .get_host_port_ipv4(5672)
        .await
        .expect("RabbitMQ's mapped port");
    format!("amqp://guest:guest@{host}:{port}/%2f")
}

/// `url` with its database replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// `url` pointed at `address` (`host:port`) instead, its credentials, path
/// and query kept.
pub fn with_address(url: &str, address: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let user_info = authority.rsplit_once('@').map(|(user, _)| user);
    match user_info {
        Some(user) => format!("{scheme}://{user}@{address}{tail}"),
        None => format!("{scheme}://{address}{tail}"),
    }
}

/// `url` with one more query parameter.
pub fn with_query_param(url: &str, param: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{param}")
}

/// `host:port` of the server in `url`, `default_port` if it names none.
pub fn address_of(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    // A port follows the last ':' unless that ':' is inside an IPv6 `[...]`.
    let has_port = host_port
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.contains(']'));
    if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_keeps_its_credentials_path_and_query_when_pointed_elsewhere() {
        assert_eq!(
            with_address(
                "amqp://user:pw@rabbit:5672/%2f?heartbeat=5",
                "127.0.0.1:40000"
            ),
            "amqp://user:pw@127.0.0.1:40000/%2f?heartbeat=5"
        );
        assert_eq!(
            with_address("postgres://db.local/app", "127.0.0.1:40000"),
            "postgres://127.0.0.1:40000/app"
        );
    }

    #[test]
    fn the_server_address_is_read_from_the_url_or_defaulted() {
        assert_eq!(address_of("amqp://u:p@rabbit/%2f", 5672), "rabbit:5672");
        assert_eq!(address_of("postgres://u@db:6543/x", 5432), "db:6543");
        assert_eq!(address_of("postgres://u@[::1]/x", 5432), "[::1]:5432");
        assert_eq!(
            address_of("postgres://u@[::1]:6543?x=1", 5432),
            "[::1]:6543"
        );
    }

    #[test]
    fn a_query_parameter_is_appended_with_the_right_separator() {
        assert_eq!(
            with_query_param("amqp://h/%2f", "heartbeat=1"),
            "amqp://h/%2f?heartbeat=1"
        );
        assert_eq!(
            with_query_param("amqp://h/%2f?a=b", "heartbeat=1"),
            "amqp://h/%2f?a=b&heartbeat=1"
        );
    }
}
