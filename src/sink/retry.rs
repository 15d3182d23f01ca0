//! One generic retry loop with exponential back-off and full jitter. The error decides whether a
//! retry makes sense ([`Retryable`]); the sleep is injected so tests control time.

use std::future::Future;
use std::time::Duration;

/// Errors that know whether trying again could help.
pub trait Retryable {
    fn is_retryable(&self) -> bool;
    /// A delay the server asked for (e.g. `Retry-After`), if any.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    pub base: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (0-based): `base · 2^attempt`, capped, with jitter
    /// drawn from [50%, 100%] of that. `unit` in [0, 1) supplies the randomness.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max_delay);
        capped.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }
}

/// Runs `op` until it succeeds, fails with a non-retryable error, or retries run out.
/// `on_retry(attempt, &err)` is called before each retry (for counters and logs).
pub async fn retry<T, E, Op, Fut, Sleep, SleepFut>(
    policy: RetryPolicy,
    sleep: Sleep,
    mut on_retry: impl FnMut(u32, &E),
    mut op: Op,
) -> Result<T, E>
where
    E: Retryable,
    Op: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    Sleep: Fn(Duration) -> SleepFut,
    SleepFut: Future<Output = ()>,
{
    let mut attempt = 0;
    loop {
        match op(attempt).await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < policy.max_retries => {
                on_retry(attempt, &e);
                let delay = e
                    .retry_after()
                    .unwrap_or_else(|| policy.delay(attempt, fastrand::f64()))
                    .min(policy.max_delay.max(Duration::from_secs(60)));
                sleep(delay).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[derive(Debug)]
    struct E(bool);
    impl Retryable for E {
        fn is_retryable(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn delays_grow_and_stay_bounded() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(p.delay(3, 1.0), Duration::from_millis(800));
        assert_eq!(p.delay(30, 1.0), Duration::from_secs(10));
        assert!(p.delay(2, 0.0) >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn retries_transient_errors_then_succeeds() {
        let slept = RefCell::new(Vec::new());
        let mut retries = 0;
        let out: Result<u32, E> = retry(
            RetryPolicy::default(),
            |d| {
                slept.borrow_mut().push(d);
                async {}
            },
            |_, _| retries += 1,
            |attempt| async move {
                if attempt < 2 {
                    Err(E(true))
                } else {
                    Ok(attempt)
                }
            },
        )
        .await;
        assert_eq!(out.unwrap(), 2);
        assert_eq!(retries, 2);
        assert_eq!(slept.borrow().len(), 2);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried_and_retries_are_bounded() {
        let mut calls = 0;
        let out: Result<(), E> = retry(
            RetryPolicy::default(),
            |_| async {},
            |_, _| {},
            |_| {
                calls += 1;
                async { Err(E(false)) }
            },
        )
        .await;
        assert!(out.is_err());
        assert_eq!(calls, 1);

        let mut calls = 0;
        let policy = RetryPolicy {
            max_retries: 3,
            ..Default::default()
        };
        let out: Result<(), E> = retry(
            policy,
            |_| async {},
            |_, _| {},
            |_| {
                calls += 1;
                async { Err(E(true)) }
            },
        )
        .await;
        assert!(out.is_err());
        assert_eq!(calls, 4);
    }
}
