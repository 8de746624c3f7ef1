//! The loop's next deadline, as one wake-up at that time.
//!
//! tokio's timer wheel wakes the thread twice for a deadline more than 64 ms away: once to move
//! it down a level of the wheel, once when it is due (and mio's millisecond epoll timeout adds
//! a wake-up 1 ms early now and then). An idle daemon wakes for little else, and a wake-up
//! costs tens of µs of CPU: a loop waiting 100 ms at a time used 130 µs per period with
//! tokio's timer and 62 µs with a timerfd on the 2-core test VM. The timerfd is armed only
//! when the deadline changes.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::Instant;
use tracing::warn;

pub enum Alarm {
    /// tokio's timer: it follows tokio's clock, which the loop's tests pause and advance.
    Tokio,
    /// A timerfd on the monotonic clock (the one `Instant` reads), and the deadline it is
    /// armed for (none once it expired).
    Exact {
        fd: AsyncFd<Fd>,
        armed: Option<Instant>,
    },
}

/// The timerfd, owned: its descriptor stays the same until it is dropped.
pub struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Alarm {
    pub fn exact() -> io::Result<Alarm> {
        let flags = TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC;
        let fd = TimerFd::new(ClockId::CLOCK_MONOTONIC, flags)?;
        // SAFETY: `Fd` owns the descriptor and always returns the same one; it is closed only
        // when the `AsyncFd` drops it.
        let fd = unsafe { AsyncFd::register_with_interest(Fd(fd), Interest::READABLE) }?;
        Ok(Alarm::Exact { fd, armed: None })
    }

    /// Return at `at` (at once if it is past). Cancel-safe: a call dropped before `at` leaves
    /// the timer armed, and the next call for the same `at` waits for that same expiry.
    pub async fn at(&mut self, at: Instant) {
        if let Alarm::Exact { fd, armed } = self {
            if *armed != Some(at) {
                match arm(&fd.get_ref().0, at) {
                    Ok(()) => *armed = Some(at),
                    Err(e) => {
                        warn!("timerfd: {e}; using tokio's timer");
                        *self = Alarm::Tokio;
                    }
                }
            }
        }
        let Alarm::Exact { fd, armed } = self else {
            return tokio::time::sleep_until(at).await;
        };
        loop {
            let Ok(mut ready) = fd.readable().await else {
                return tokio::time::sleep_until(at).await;
            };
            // An expiry is read once; nothing to read (WouldBlock) clears the readiness.
            if let Ok(r) = ready.try_io(|f| f.get_ref().0.wait().map_err(io::Error::from)) {
                if let Err(e) = r {
                    warn!("timerfd: {e}");
                }
                *armed = None;
                return;
            }
        }
    }
}

/// Arm `fd` to expire once at `at`. A zero time would disarm it: a deadline already past is
/// armed 1 ns out.
fn arm(fd: &TimerFd, at: Instant) -> nix::Result<()> {
    let d = at.saturating_duration_since(Instant::now());
    let d = TimeSpec::from_duration(d.max(Duration::from_nanos(1)));
    fd.set(Expiration::OneShot(d), TimerSetTimeFlags::empty())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_timerfd_alarm_returns_at_its_deadline_once_and_follows_a_changed_one() {
        let mut a = Alarm::exact().unwrap();
        let t0 = Instant::now();
        a.at(t0 + Duration::from_millis(30)).await;
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");

        // Dropped before its deadline, then moved later: the first deadline does not fire it.
        // (Margins of 200 ms: a loaded CI machine may stall the thread for a while.)
        let t1 = Instant::now();
        let early = t1 + Duration::from_millis(200);
        assert!(tokio::time::timeout(Duration::from_millis(5), a.at(early))
            .await
            .is_err());
        tokio::time::sleep(Duration::from_millis(250)).await; // the first deadline passes
        let later = t1 + Duration::from_millis(450);
        a.at(later).await;
        assert!(Instant::now() >= later);

        // A past deadline returns at once.
        let t = Instant::now();
        a.at(t1).await;
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn an_expiry_missed_while_dropped_is_kept_for_the_same_deadline() {
        let mut a = Alarm::exact().unwrap();
        let at = Instant::now() + Duration::from_millis(200);
        assert!(tokio::time::timeout(Duration::from_millis(5), a.at(at))
            .await
            .is_err());
        tokio::time::sleep(Duration::from_millis(250)).await;
        let t = Instant::now();
        a.at(at).await;
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
    }
}
