//! What a daemon's library crate provides: its config section, its sockets, how its health is
//! proven, and `run`. Kept tiny.
use std::io;
use std::net::TcpListener as StdTcpListener;

use dragonfly_runtime::config::{DaemonConfig, Invalid, ListenConfig};
use dragonfly_runtime::sockets::{SocketError, Sockets};
use dragonfly_runtime::{BEAT_EVERY, Context, Daemon, Health, NoStore};
use tokio::{io::AsyncWriteExt, net::TcpListener, time};
use tokio_util::sync::CancellationToken;

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDemoConfig {
    listen: Option<String>,
}

/// `[demo]`.
pub(crate) struct DemoConfig {
    listen: ListenConfig,
}

impl DaemonConfig for DemoConfig {
    const SECTION: &'static str = "demo";
    type Raw = RawDemoConfig;

    fn validate(raw: RawDemoConfig) -> Result<Self, Invalid> {
        let listen = raw.listen.as_deref().unwrap_or("127.0.0.1:7070");
        Ok(Self {
            listen: ListenConfig::parse("listen", listen)?,
        })
    }
}

/// The daemon, as the frame sees it.
pub(crate) struct Demo;

impl Daemon for Demo {
    const NAME: &'static str = "demo";
    const ABOUT: &'static str = "Dragonfly runtime reference daemon";
    // The accept loop beats; with no store, that is its proof of health.
    const HEALTH: Health = Health::MainLoop;
    type Config = DemoConfig;
    type Sockets = StdTcpListener;
    type Store = NoStore;
    type Error = io::Error;

    fn sockets(config: &DemoConfig, passed: &mut Sockets) -> Result<StdTcpListener, SocketError> {
        passed.tcp_or_bind("http", config.listen.addr)
    }

    async fn run(
        ctx: Context<Self>,
        listener: StdTcpListener,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        run(ctx, TcpListener::from_std(listener)?, shutdown).await
    }
}

/// Greets every connection until `shutdown` is cancelled. Receives its socket; never binds.
pub(crate) async fn run(
    ctx: Context<Demo>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> io::Result<()> {
    // The loop beats on every iteration, and at least once a BEAT_EVERY thanks to `tick`: an
    // idle loop is alive, a stuck one is not, and the frame feeds the watchdog accordingly.
    let mut tick = time::interval(BEAT_EVERY);
    loop {
        ctx.heartbeat.beat();
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
