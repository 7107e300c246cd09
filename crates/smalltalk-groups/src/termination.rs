//! Termination conditions: when a round ends, and when a group has
//! finished. They compose with [`Termination::and`] and
//! [`Termination::or`], and are checked after every turn against the
//! round's counters and the group's, which are saved with the group, so a
//! restarted process resumes them where they stood.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A condition on a group's progress: when a round ends, and when a
/// group has finished.
///
/// Checked after every turn: when it holds, the round ends. Checked again
/// when a round would start: when it already holds there (a round budget,
/// a token budget), the group has finished and the round is refused with
/// [`Error::Finished`](crate::Error::Finished).
///
/// ```
/// use smalltalk_groups::Termination;
///
/// // End a round after 6 turns or when someone says TERMINATE; end the
/// // group after 20 rounds or 50,000 tokens.
/// let done = Termination::MaxTurns(6)
///     .or(Termination::text_mention("TERMINATE"))
///     .or(Termination::MaxRounds(20))
///     .or(Termination::TokenBudget(50_000));
/// assert_eq!(done.to_string(), "(max 6 turns OR mentions \"TERMINATE\" OR max 20 rounds OR at most 50000 tokens)");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "value")]
pub enum Termination {
    /// The round holds this many messages (the one that started it
    /// included).
    MaxMessages(u64),
    /// Agents took this many turns in the round.
    MaxTurns(u64),
    /// The group completed this many rounds.
    MaxRounds(u64),
    /// The last message contains this text.
    TextMention(String),
    /// The group's agents used this many tokens in all (as reported by
    /// their replies).
    TokenBudget(u64),
    /// The round has run this long; the turn under way is cut off at the
    /// deadline.
    #[serde(with = "smalltalk_types::time::duration_ms")]
    Timeout(Duration),
    /// [`GroupManager::stop`](crate::GroupManager::stop) was called during
    /// the round; the turn under way is cancelled.
    ExternalStop,
    /// No participant may speak (every one filtered, disallowed or
    /// throttled). A round always ends then, whether or not this is part
    /// of the condition; naming it lets an `and` depend on it.
    NoEligibleSpeaker,
    /// Every condition holds.
    All(Vec<Termination>),
    /// Some condition holds.
    Any(Vec<Termination>),
}

impl Termination {
    /// [`Termination::TextMention`].
    pub fn text_mention(text: impl Into<String>) -> Self {
        Termination::TextMention(text.into())
    }

    /// Holds when both hold.
    pub fn and(self, other: Termination) -> Self {
        match self {
            Termination::All(mut all) => {
                all.push(other);
                Termination::All(all)
            }
            first => Termination::All(vec![first, other]),
        }
    }

    /// Holds when either holds.
    pub fn or(self, other: Termination) -> Self {
        match self {
            Termination::Any(mut any) => {
                any.push(other);
                Termination::Any(any)
            }
            first => Termination::Any(vec![first, other]),
        }
    }

    /// Checks the condition's values: no zero limit, no empty mention, no
    /// empty composition, nesting at most 16 levels.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_at(0)
    }

    fn validate_at(&self, depth: usize) -> Result<(), String> {
        if depth > 16 {
            return Err("termination conditions nest deeper than 16 levels".into());
        }
        match self {
            Termination::MaxMessages(0)
            | Termination::MaxTurns(0)
            | Termination::MaxRounds(0)
            | Termination::TokenBudget(0) => Err(format!("{self} is zero: it would always hold")),
            Termination::TextMention(text) if text.is_empty() => {
                Err("a text mention must not be empty".into())
            }
            Termination::Timeout(timeout) if timeout.is_zero() => {
                Err("a timeout must be longer than zero".into())
            }
            Termination::All(parts) | Termination::Any(parts) if parts.is_empty() => {
                Err("an empty AND/OR has nothing to check".into())
            }
            Termination::All(parts) | Termination::Any(parts) => parts
                .iter()
                .try_for_each(|part| part.validate_at(depth + 1)),
            _ => Ok(()),
        }
    }

    /// Whether the condition holds at `progress`; when it does, the leaves
    /// that held are pushed to `reasons`.
    pub(crate) fn check(&self, progress: &Progress<'_>, reasons: &mut Vec<String>) -> bool {
        let holds = match self {
            Termination::MaxMessages(limit) => progress.round_messages >= *limit,
            Termination::MaxTurns(limit) => progress.round_turns >= *limit,
            Termination::MaxRounds(limit) => progress.rounds_completed >= *limit,
            Termination::TextMention(text) => progress
                .last_text
                .is_some_and(|last| last.contains(text.as_str())),
            Termination::TokenBudget(budget) => progress.tokens >= *budget,
            Termination::Timeout(limit) => progress.elapsed >= *limit,
            Termination::ExternalStop => progress.stopped,
            Termination::NoEligibleSpeaker => progress.no_eligible_speaker,
            Termination::All(parts) => {
                let mut held = Vec::new();
                let all = parts.iter().all(|part| part.check(progress, &mut held));
                if all {
                    reasons.append(&mut held);
                }
                return all;
            }
            Termination::Any(parts) => {
                // Every part is checked, so each one that holds is named.
                let mut any = false;
                for part in parts {
                    any |= part.check(progress, reasons);
                }
                return any;
            }
        };
        if holds {
            reasons.push(self.to_string());
        }
        holds
    }

    /// The round's deadline, if the condition has a timeout that alone
    /// ends the round (one not under an `All`).
    pub(crate) fn deadline(&self) -> Option<Duration> {
        match self {
            Termination::Timeout(limit) => Some(*limit),
            Termination::Any(parts) => parts.iter().filter_map(Termination::deadline).min(),
            _ => None,
        }
    }
}

impl std::fmt::Display for Termination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let join = |f: &mut std::fmt::Formatter<'_>, parts: &[Termination], word: &str| {
            f.write_str("(")?;
            for (index, part) in parts.iter().enumerate() {
                if index > 0 {
                    write!(f, " {word} ")?;
                }
                write!(f, "{part}")?;
            }
            f.write_str(")")
        };
        match self {
            Termination::MaxMessages(limit) => write!(f, "max {limit} messages"),
            Termination::MaxTurns(limit) => write!(f, "max {limit} turns"),
            Termination::MaxRounds(limit) => write!(f, "max {limit} rounds"),
            Termination::TextMention(text) => write!(f, "mentions {text:?}"),
            Termination::TokenBudget(budget) => write!(f, "at most {budget} tokens"),
            Termination::Timeout(limit) => write!(f, "timeout {limit:?}"),
            Termination::ExternalStop => f.write_str("external stop"),
            Termination::NoEligibleSpeaker => f.write_str("no eligible speaker"),
            Termination::All(parts) => join(f, parts, "AND"),
            Termination::Any(parts) => join(f, parts, "OR"),
        }
    }
}

/// What a termination condition is checked against.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress<'a> {
    pub(crate) round_messages: u64,
    pub(crate) round_turns: u64,
    pub(crate) rounds_completed: u64,
    pub(crate) tokens: u64,
    pub(crate) elapsed: Duration,
    pub(crate) last_text: Option<&'a str>,
    pub(crate) stopped: bool,
    pub(crate) no_eligible_speaker: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(condition: &Termination, progress: Progress<'_>) -> (bool, Vec<String>) {
        let mut reasons = Vec::new();
        (condition.check(&progress, &mut reasons), reasons)
    }

    #[test]
    fn and_or_compose_and_name_what_held() {
        let condition = Termination::MaxTurns(3)
            .and(Termination::text_mention("DONE"))
            .or(Termination::MaxMessages(10));
        let progress = Progress {
            round_turns: 3,
            round_messages: 4,
            last_text: Some("not yet"),
            ..Progress::default()
        };
        assert!(!check(&condition, progress).0);
        let done = Progress {
            last_text: Some("we are DONE"),
            ..progress
        };
        let (holds, reasons) = check(&condition, done);
        assert!(holds);
        assert_eq!(reasons, ["max 3 turns", "mentions \"DONE\""]);
        let (holds, reasons) = check(
            &condition,
            Progress {
                round_messages: 10,
                ..done
            },
        );
        assert!(holds);
        assert_eq!(reasons.len(), 3, "every part that held is named");
    }

    #[test]
    fn every_leaf_is_checked() {
        let cases = [
            (
                Termination::MaxRounds(2),
                Progress {
                    rounds_completed: 2,
                    ..Progress::default()
                },
            ),
            (
                Termination::TokenBudget(5),
                Progress {
                    tokens: 7,
                    ..Progress::default()
                },
            ),
            (
                Termination::Timeout(Duration::from_secs(1)),
                Progress {
                    elapsed: Duration::from_secs(1),
                    ..Progress::default()
                },
            ),
            (
                Termination::ExternalStop,
                Progress {
                    stopped: true,
                    ..Progress::default()
                },
            ),
            (
                Termination::NoEligibleSpeaker,
                Progress {
                    no_eligible_speaker: true,
                    ..Progress::default()
                },
            ),
        ];
        for (condition, progress) in cases {
            assert!(check(&condition, progress).0, "{condition}");
            assert!(!check(&condition, Progress::default()).0, "{condition}");
        }
    }

    #[test]
    fn bad_conditions_are_refused() {
        for bad in [
            Termination::MaxTurns(0),
            Termination::text_mention(""),
            Termination::Any(vec![]),
            Termination::MaxTurns(2).or(Termination::Timeout(Duration::ZERO)),
        ] {
            assert!(bad.validate().is_err(), "{bad}");
        }
        Termination::MaxTurns(2).validate().unwrap();
    }

    #[test]
    fn conditions_round_trip_through_json() {
        let condition = Termination::MaxTurns(3)
            .or(Termination::Timeout(Duration::from_millis(1500)))
            .and(Termination::ExternalStop);
        let json = serde_json::to_string(&condition).unwrap();
        assert_eq!(
            serde_json::from_str::<Termination>(&json).unwrap(),
            condition
        );
        assert_eq!(
            Termination::MaxTurns(3)
                .or(Termination::Timeout(Duration::from_secs(2)))
                .deadline(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            condition.deadline(),
            None,
            "a timeout under AND does not end a round alone"
        );
    }
}
