//! The one way to wait for something that has no event to watch: look again every
//! [`EVERY`] until it holds or a deadline passes.
//!
//! Tests wait with [`eventually`] (or [`eventually_explained`], whose failure says what was
//! seen); code that reports a timeout instead of failing uses [`poll`]. Nothing waits by
//! sleeping for a while and then looking once: how long something takes depends on the
//! machine, so a wait ends on what is observed, with a deadline generous enough for a slow one.

use std::time::Duration;

use tokio::time::Instant;

/// How often [`eventually`] and [`poll`] look again.
pub const EVERY: Duration = Duration::from_millis(200);

/// `check` every [`EVERY`] until it returns `Some`, or `None` once `within` has passed. A check
/// still running at the deadline is cut short (a request on a dead connection can hang for
/// minutes); one started before it is always made.
pub async fn poll<T>(within: Duration, check: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    poll_every(within, EVERY, check).await
}

/// [`poll`], looking again every `every`.
pub(crate) async fn poll_every<T>(
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let mut looks = Looks::new(within, every);
    while looks.next().await {
        if let Some(Some(v)) = looks.cut(check()).await {
            return Some(v);
        }
    }
    None
}

/// The pace and deadline of one wait, for the loops that cannot take an async closure (a
/// future that must be `Send` for every lifetime, as a spawned one must, cannot hold one yet).
#[derive(Debug)]
pub(crate) struct Looks {
    deadline: Instant,
    every: Duration,
    looked: bool,
}

impl Looks {
    pub(crate) fn new(within: Duration, every: Duration) -> Self {
        Looks {
            deadline: Instant::now() + within,
            every,
            looked: false,
        }
    }

    /// Whether to look (again): the first look is made at once, each next one after `every`,
    /// none once the deadline has passed.
    pub(crate) async fn next(&mut self) -> bool {
        if self.looked {
            if Instant::now() >= self.deadline {
                return false;
            }
            tokio::time::sleep(self.every).await;
        }
        self.looked = true;
        true
    }

    /// What `look` comes to, or `None` if it is still running at the deadline.
    pub(crate) async fn cut<F: std::future::Future>(&self, look: F) -> Option<F::Output> {
        tokio::time::timeout_at(self.deadline, look).await.ok()
    }
}

/// `check` every [`EVERY`] until it returns `Some`: that value. Panics naming `what` and the
/// deadline when `within` passes first.
///
/// ```no_run
/// # async fn demo(ready: impl AsyncFnMut() -> Option<()>) {
/// testkit::eventually("the node ready", std::time::Duration::from_secs(90), ready).await;
/// # }
/// ```
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    check: impl AsyncFnMut() -> Option<T>,
) -> T {
    eventually_explained(what, within, check, async || String::new()).await
}

/// [`eventually`], whose panic also carries what `explain` says (called once, on timeout): the
/// state that was waited on, the logs of the components involved.
pub async fn eventually_explained<T>(
    what: &str,
    within: Duration,
    check: impl AsyncFnMut() -> Option<T>,
    explain: impl AsyncFnOnce() -> String,
) -> T {
    match poll(within, check).await {
        Some(v) => v,
        None => {
            let why = explain().await;
            let sep = if why.is_empty() { "" } else { "\n" };
            panic!("{what}: not within {within:?}{sep}{why}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_value_seen() {
        let mut n = 0;
        let v = eventually("three looks", Duration::from_secs(60), async || {
            n += 1;
            (n == 3).then_some(n)
        })
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "never: not within 10ms\nit said no")]
    async fn panics_with_what_and_the_explanation() {
        eventually_explained(
            "never",
            Duration::from_millis(10),
            async || None::<()>,
            async || "it said no".to_owned(),
        )
        .await;
    }

    #[tokio::test]
    async fn a_check_that_hangs_is_cut_at_the_deadline() {
        let found = poll(Duration::from_millis(10), async || {
            std::future::pending::<()>().await;
            Some(())
        })
        .await;
        assert_eq!(found, None);
    }

    #[tokio::test]
    async fn looks_at_least_once_and_again_until_the_deadline() {
        let mut looks = 0;
        let found = poll(Duration::ZERO, async || {
            looks += 1;
            None::<()>
        })
        .await;
        assert_eq!((found, looks), (None, 1));
        let mut looks = 0;
        let found = poll(Duration::from_millis(300), async || {
            looks += 1;
            None::<()>
        })
        .await;
        // Once at the start, once more at least after EVERY (the deadline is later).
        assert_eq!(found, None);
        assert!(looks >= 2, "{looks}");
    }
}
