//! Waiting for the projector: `Prefer: wait` parks on PostgreSQL notifications instead of
//! polling. One LISTEN connection per gateway bumps a counter; each waiter re-checks its own
//! condition when the counter moves, until its deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone)]
pub struct Waiters {
    tx: Arc<watch::Sender<u64>>,
}

impl Waiters {
    pub async fn start(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener
            .listen(atp_store::projection::NOTIFY_CHANNEL)
            .await?;
        let (tx, _) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let weak = Arc::downgrade(&tx);
        tokio::spawn(async move {
            loop {
                let got = listener.recv().await;
                let Some(tx) = weak.upgrade() else { break };
                match got {
                    Ok(_) => tx.send_modify(|n| *n += 1),
                    Err(e) => {
                        // PgListener reconnects on the next recv; wake waiters so they re-check.
                        tracing::warn!(error = %e, "projection notifications interrupted");
                        tx.send_modify(|n| *n += 1);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(Self { tx })
    }

    /// Re-runs `check` after each projector commit until it yields a value or `within` passes.
    pub async fn until<T, E, F, Fut>(&self, within: Duration, mut check: F) -> Result<Option<T>, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let deadline = Instant::now() + within;
        let mut rx = self.tx.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(v) = check().await? {
                return Ok(Some(v));
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Ok(None);
            }
        }
    }
}
