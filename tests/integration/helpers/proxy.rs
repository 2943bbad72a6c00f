//! `Proxy`: the one TCP proxy a test puts between a client under test (the
//! worker, the intake) and RabbitMQ, Postgres or a PBX simulator, to play a
//! link failing without touching the shared services. It is always in one
//! mode:
//!
//! | mode | new connections | open connections |
//! |---|---|---|
//! | forward (`restore`) | relayed | bytes flow both ways |
//! | `cut` | closed at once | closed |
//! | `stall` | accepted, not relayed until it ends | nothing flows; bytes are held, not lost |
//! | `hold_replies` | relayed | client → server flows, server → client is held |
//!
//! Held bytes are delivered when the mode changes back to forward.

use std::sync::{Arc, Mutex};

use session_enricher::simulator::Simulator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::services::{address_of, amqp_url, database_url, with_address};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    Cut,
    Stall,
    HoldReplies,
}

/// Which way bytes go through a relayed connection.
#[derive(Clone, Copy)]
enum Direction {
    ToServer,
    ToClient,
}

impl Mode {
    fn lets_through(self, direction: Direction) -> bool {
        match self {
            Mode::Forward => true,
            Mode::HoldReplies => matches!(direction, Direction::ToServer),
            Mode::Cut | Mode::Stall => false,
        }
    }
}

pub struct Proxy {
    /// The service's URL, pointed at this proxy.
    url: String,
    mode: watch::Sender<Mode>,
    /// Cancelled by a cut: ends every connection relayed before it, even if
    /// the proxy is restored before their relays notice the mode.
    links: Arc<Mutex<CancellationToken>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// A forwarding proxy to the RabbitMQ the tests use.
    pub async fn broker() -> Self {
        Self::start(amqp_url(), 5672).await
    }

    /// A forwarding proxy to the Postgres server the tests use.
    pub async fn postgres() -> Self {
        Self::start(database_url(), 5432).await
    }

    /// A forwarding proxy to a PBX simulator: `url()` is the
    /// `YEASTAR_BASE_URL` through it.
    pub async fn pbx(sim: &Simulator) -> Self {
        Self::start(sim.base_url(), 80).await
    }

    async fn start(service_url: String, default_port: u16) -> Self {
        let upstream = address_of(&service_url, default_port);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, modes) = watch::channel(Mode::Forward);
        let links = Arc::new(Mutex::new(CancellationToken::new()));
        let current = Arc::clone(&links);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let link = {
                    let link = current.lock().unwrap();
                    (*modes.borrow() != Mode::Cut).then(|| link.clone())
                };
                // When cut, the connection is dropped: refused, in effect.
                if let Some(link) = link {
                    tokio::spawn(relay(client, upstream.clone(), modes.clone(), link));
                }
            }
        });
        Self {
            url: with_address(&service_url, &addr.to_string()),
            mode,
            links,
            accept,
        }
    }

    /// The service's URL (credentials, database or vhost, query) through
    /// this proxy.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.set(Mode::Cut);
    }

    /// Keeps connections open but lets nothing through, either way.
    pub fn stall(&self) {
        self.set(Mode::Stall);
    }

    /// Holds back everything the server sends (a publish stays waiting for
    /// its confirm); what the client sends still goes through.
    pub fn hold_replies(&self) {
        self.set(Mode::HoldReplies);
    }

    /// Forwards again: held bytes go on, new connections are relayed.
    pub fn restore(&self) {
        self.set(Mode::Forward);
    }

    fn set(&self, mode: Mode) {
        let mut links = self.links.lock().unwrap();
        self.mode.send_replace(mode);
        if mode == Mode::Cut {
            links.cancel();
            *links = CancellationToken::new();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.links.lock().unwrap().cancel();
    }
}

async fn relay(
    client: TcpStream,
    upstream: String,
    mut mode: watch::Receiver<Mode>,
    cut: CancellationToken,
) {
    let relayed = async move {
        // A stalled link does not answer a new connection either.
        match mode.wait_for(|m| *m != Mode::Stall).await.map(|m| *m) {
            Ok(Mode::Cut) | Err(_) => return,
            Ok(_) => {}
        }
        let Ok(server) = TcpStream::connect(&upstream).await else {
            return;
        };
        let (from_client, to_client) = client.into_split();
        let (from_server, to_server) = server.into_split();
        tokio::select! {
            () = pump(from_client, to_server, mode.clone(), Direction::ToServer) => {}
            () = pump(from_server, to_client, mode, Direction::ToClient) => {}
        }
    };
    tokio::select! {
        () = relayed => {}
        () = cut.cancelled() => {}
    }
    // Both halves of both sockets are dropped here: the connection closes.
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    direction: Direction,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if !let_through(&mut mode, direction).await {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = mode.wait_for(|m| !m.lets_through(direction)) => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just as a stall or hold began are held until it ends.
        if !let_through(&mut mode, direction).await {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits until bytes may go `direction`: `true` then, `false` if cut.
async fn let_through(mode: &mut watch::Receiver<Mode>, direction: Direction) -> bool {
    matches!(
        mode.wait_for(|m| *m == Mode::Cut || m.lets_through(direction))
            .await
            .map(|m| *m),
        Ok(m) if m != Mode::Cut
    )
}
