//! What a daemon's library crate provides: its config section and `run`. Kept tiny.
use std::io;

use dragonfly_runtime::config::{DaemonConfig, Invalid, ListenConfig};
use dragonfly_runtime::notify::{self, Heartbeat};
use tokio::{io::AsyncWriteExt, net::TcpListener, time};
use tokio_util::sync::CancellationToken;

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDemo {
    listen: Option<String>,
}

/// `[demo]`.
pub(crate) struct Demo {
    pub(crate) listen: ListenConfig,
}

impl DaemonConfig for Demo {
    const SECTION: &'static str = "demo";
    type Raw = RawDemo;

    fn validate(raw: RawDemo) -> Result<Self, Invalid> {
        let listen = raw.listen.as_deref().unwrap_or("127.0.0.1:7070");
        Ok(Self {
            listen: ListenConfig::parse("listen", listen)?,
        })
    }
}

/// Greet every connection until `shutdown` is cancelled. Receives its socket; never binds.
pub(crate) async fn run(listener: TcpListener, shutdown: CancellationToken) -> io::Result<()> {
    // The loop beats on every iteration, and at least once a second thanks to `tick`; the
    // watchdog is only fed while it does (WatchdogSec= must then be at least 2s).
    let heartbeat = Heartbeat::new();
    let _watchdog = notify::spawn_watchdog(shutdown.clone(), heartbeat.progressed());
    let mut tick = time::interval(time::Duration::from_secs(1));
    notify::ready(); // Really serving: the listener is ours and accepting.
    loop {
        heartbeat.beat();
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
            accepted = listener.accept() => {
                let (mut conn, _) = accepted?;
                conn.write_all(b"hello from dragonfly\n").await?;
            }
        }
    }
}
