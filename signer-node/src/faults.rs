//! Faults a test can inject into a node process, to prove that runs
//! survive what a network does to frames: frames lost after the receiver
//! acknowledged them, and a session queue so small that every burst meets
//! backpressure.
//!
//! Compiled only with the `fault-injection` feature (CI builds the
//! workspace with `--all-features`, so the test binaries have it; a
//! `cargo build` of the node has none of it). Even then nothing happens
//! unless the process is started with `CUSTOS_SIGNER_FAULTS`, a comma-
//! separated list:
//!
//! * `drop_after_ack=P`: each inbound frame is, with probability `P`,
//!   acknowledged as delivered and then thrown away (the loss the delivery
//!   acknowledgement exists to prevent; only the stall watchdog's resend
//!   recovers it);
//! * `session_queue=N`: each session's inbound queue holds `N` frames.

/// The faults of this process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Probability of losing an inbound frame after acknowledging it.
    pub drop_after_ack: f64,
    /// Inbound queue size of each session, instead of the default.
    pub session_queue: Option<usize>,
}

impl Faults {
    /// The faults `CUSTOS_SIGNER_FAULTS` asks for; none without the
    /// `fault-injection` feature.
    pub fn from_env() -> Faults {
        #[cfg(feature = "fault-injection")]
        if let Ok(text) = std::env::var("CUSTOS_SIGNER_FAULTS") {
            let faults = Faults::parse(&text);
            tracing::warn!(?faults, "fault injection is on (CUSTOS_SIGNER_FAULTS)");
            return faults;
        }
        Faults::default()
    }

    /// Parses the list; unknown or malformed items are ignored.
    pub fn parse(text: &str) -> Faults {
        let mut faults = Faults::default();
        for item in text.split(',') {
            match item.trim().split_once('=') {
                Some(("drop_after_ack", value)) => {
                    if let Ok(value) = value.parse::<f64>() {
                        faults.drop_after_ack = value.clamp(0.0, 1.0);
                    }
                }
                Some(("session_queue", value)) => {
                    faults.session_queue = value.parse::<usize>().ok().filter(|size| *size > 0);
                }
                _ => {}
            }
        }
        faults
    }

    /// Whether to lose this frame (after its acknowledgement).
    pub fn lose_frame(&self) -> bool {
        if self.drop_after_ack <= 0.0 {
            return false;
        }
        let draw = rand_core::RngCore::next_u32(&mut rand_core::OsRng);
        f64::from(draw) / f64::from(u32::MAX) < self.drop_after_ack
    }
}

#[cfg(test)]
mod tests {
    use super::Faults;

    #[test]
    fn the_fault_list_parses_and_ignores_what_it_does_not_know() {
        assert_eq!(
            Faults::parse("drop_after_ack=0.25, session_queue=2,bogus=1,x"),
            Faults {
                drop_after_ack: 0.25,
                session_queue: Some(2)
            }
        );
        assert_eq!(Faults::parse(""), Faults::default());
        assert_eq!(Faults::parse("drop_after_ack=7").drop_after_ack, 1.0);
        assert_eq!(Faults::parse("session_queue=0").session_queue, None);
        assert!(!Faults::default().lose_frame());
        assert!(Faults::parse("drop_after_ack=1").lose_frame());
    }
}
