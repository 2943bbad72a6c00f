//! A TCP proxy a test controls, put between the worker and RabbitMQ or
//! Postgres: `cut` closes every connection and refuses new ones, `stall`
//! keeps them open but forwards nothing, `restore` lets traffic through.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Open,
    Cut,
    Stalled,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, watcher) = watch::channel(Mode::Open);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *watcher.borrow() == Mode::Cut {
                    continue; // dropped: connection refused in effect
                }
                tokio::spawn(relay(inbound, upstream, watcher.clone()));
            }
        });
        Self { addr, mode }
    }

    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stalled);
    }

    pub fn restore(&self) {
        self.mode.send_replace(Mode::Open);
    }
}

async fn relay(inbound: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    if !open_after_any_stall(&mut mode).await {
        return;
    }
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let (from_client, to_client) = inbound.into_split();
    let (from_server, to_server) = outbound.into_split();
    let mut cut = mode.clone();
    tokio::select! {
        () = pump(from_client, to_server, mode.clone()) => {}
        () = pump(from_server, to_client, mode.clone()) => {}
        _ = cut.wait_for(|m| *m == Mode::Cut) => {}
    }
    // Both halves of both sockets are dropped here: the connection closes.
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if !open_after_any_stall(&mut mode).await {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = mode.wait_for(|m| *m != Mode::Open) => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just as a stall began are held until it ends.
        if !open_after_any_stall(&mut mode).await {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits out a stall; `true` if traffic may flow, `false` if cut.
async fn open_after_any_stall(mode: &mut watch::Receiver<Mode>) -> bool {
    matches!(
        mode.wait_for(|m| *m != Mode::Stalled).await.map(|m| *m),
        Ok(Mode::Open)
    )
}
