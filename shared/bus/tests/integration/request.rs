use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dragonfly_bus::{BusError, Request};
use dragonfly_testkit::require_nats_servers;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{WAIT, connect, raw_client, raw_flush, start};

#[derive(Debug, Serialize, Deserialize)]
struct Echo {
    text: String,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct EchoReply {
    text: String,
    served_by: usize,
}

impl Request for Echo {
    const SUBJECT: &'static str = "dragonfly.test.echo";
    type Reply = EchoReply;
}

/// Same subject, another shape: what an outdated client would send.
#[derive(Debug, Serialize, Deserialize)]
struct OutdatedEcho {
    number: u32,
}

impl Request for OutdatedEcho {
    const SUBJECT: &'static str = Echo::SUBJECT;
    type Reply = EchoReply;
}

fn echo(text: &str) -> Echo {
    Echo {
        text: text.to_owned(),
    }
}

/// Serves `Echo` as instance `id`, counting the requests it answers.
async fn serve_echo(
    bus: &dragonfly_bus::Bus,
    shutdown: &CancellationToken,
    id: usize,
    count: &Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let count = Arc::clone(count);
    bus.serve(shutdown.clone(), move |req: Echo| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            EchoReply {
                text: req.text,
                served_by: id,
            }
        }
    })
    .await
    .expect("serve")
}

#[tokio::test]
async fn request_gets_the_reply_and_instances_share_the_load() {
    for binary in require_nats_servers() {
        let server = start(&binary).await;
        let service_a = connect(&server, "service-a").await;
        let service_b = connect(&server, "service-b").await;
        let client = connect(&server, "client").await;
        let shutdown = CancellationToken::new();
        let counts = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
        let a = serve_echo(&service_a, &shutdown, 0, &counts[0]).await;
        let b = serve_echo(&service_b, &shutdown, 1, &counts[1]).await;
        service_a.flush().await.expect("flush");
        service_b.flush().await.expect("flush");

        for n in 0..40 {
            let reply = client
                .request(&echo(&format!("hello {n}")), WAIT)
                .await
                .expect("a reply");
            assert_eq!(reply.text, format!("hello {n}"));
        }
        let (a_count, b_count) = (
            counts[0].load(Ordering::SeqCst),
            counts[1].load(Ordering::SeqCst),
        );
        assert_eq!(a_count + b_count, 40, "each request is answered once");
        assert!(
            a_count > 0 && b_count > 0,
            "queue group shares: {a_count} / {b_count}"
        );

        shutdown.cancel();
        tokio::time::timeout(WAIT, a)
            .await
            .expect("a stops")
            .expect("a ok");
        tokio::time::timeout(WAIT, b)
            .await
            .expect("b stops")
            .expect("b ok");
        let err = client
            .request(&echo("anyone?"), WAIT)
            .await
            .expect_err("nobody serves after shutdown");
        assert!(matches!(err, BusError::NoResponders { .. }), "{err:?}");
    }
}

#[tokio::test]
async fn request_without_a_service_fails_at_once_with_no_responders() {
    for binary in require_nats_servers() {
        let server = start(&binary).await;
        let client = connect(&server, "client").await;
        crate::wait_state(&client, dragonfly_bus::ConnectionState::Connected).await;
        let started = Instant::now();
        let err = client
            .request(&echo("hello"), WAIT)
            .await
            .expect_err("no service");
        assert!(
            matches!(&err, BusError::NoResponders { subject } if subject == Echo::SUBJECT),
            "{err:?}"
        );
        assert!(started.elapsed() < WAIT / 2, "took {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn request_to_a_silent_service_times_out() {
    for binary in require_nats_servers() {
        let server = start(&binary).await;
        let client = connect(&server, "client").await;
        // Someone listens, so NATS does not answer "no responders", but never replies.
        let raw = raw_client(&server).await;
        let _silent = raw.subscribe(Echo::SUBJECT).await.expect("raw subscribe");
        raw_flush(&raw).await;

        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let err = client
            .request(&echo("hello"), timeout)
            .await
            .expect_err("no reply");
        assert!(
            matches!(&err, BusError::Timeout { subject, timeout: t } if subject == Echo::SUBJECT && *t == timeout),
            "{err:?}"
        );
        assert!(started.elapsed() >= timeout, "took {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn a_request_the_service_cannot_decode_is_rejected() {
    for binary in require_nats_servers() {
        let server = start(&binary).await;
        let service = connect(&server, "service").await;
        let client = connect(&server, "client").await;
        let shutdown = CancellationToken::new();
        let count = Arc::new(AtomicUsize::new(0));
        let _task = serve_echo(&service, &shutdown, 0, &count).await;
        service.flush().await.expect("flush");

        let err = client
            .request(&OutdatedEcho { number: 7 }, WAIT)
            .await
            .expect_err("rejected");
        match &err {
            BusError::Rejected { subject, reason } => {
                assert_eq!(subject, Echo::SUBJECT);
                assert!(reason.contains("malformed request"), "{reason}");
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        assert_eq!(count.load(Ordering::SeqCst), 0, "the handler never saw it");
        // The service goes on answering.
        let reply = client
            .request(&echo("still here"), WAIT)
            .await
            .expect("reply");
        assert_eq!(reply.text, "still here");
        shutdown.cancel();
    }
}
