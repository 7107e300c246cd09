//! Agent state preservation (FR-009a): keep the newest turns, trim what is
//! over the size limit, refuse what stays too large compressed.

use serde::Serialize;
use smalltalk_storage::codec::{COMPRESS_ABOVE, compress};
use smalltalk_types::AgentState;

use crate::config::AgentStateLimits;
use crate::{Error, Result};

/// What preservation did to an agent's state before it was stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preserved {
    /// Oldest turns dropped to stay within `max_turns`.
    pub turns_over_limit: usize,
    /// Further oldest turns dropped to get under `max_bytes`.
    pub turns_trimmed_for_size: usize,
    /// Trimmable context fields dropped to get under `max_bytes`, in order.
    pub fields_trimmed: Vec<String>,
    /// The state's encoded size as stored (before compression).
    pub bytes: usize,
    /// Whether it is large enough to be stored gzip-compressed.
    pub compressed: bool,
}

fn encoded_len<T: Serialize>(value: &T) -> Result<usize> {
    Ok(serde_json::to_vec(value)
        .map_err(smalltalk_types::Error::Encoding)?
        .len())
}

/// Applies `limits` to `state` in place.
pub(crate) fn preserve(state: &mut AgentState, limits: AgentStateLimits) -> Result<Preserved> {
    let mut report = Preserved::default();
    if state.history.len() > limits.max_turns {
        report.turns_over_limit = state.history.len() - limits.max_turns;
        state.history.drain(..report.turns_over_limit);
    }
    let mut bytes = encoded_len(state)?;
    if bytes > limits.max_bytes {
        // Oldest turns first: subtract each turn's size (plus its comma)
        // instead of re-encoding the whole state per turn.
        let mut drop = 0;
        let mut estimate = bytes;
        while estimate > limits.max_bytes && drop < state.history.len() {
            estimate = estimate.saturating_sub(encoded_len(&state.history[drop])? + 1);
            drop += 1;
        }
        state.history.drain(..drop);
        report.turns_trimmed_for_size = drop;
        bytes = encoded_len(state)?;
        for field in state.trimmable_fields.clone() {
            if bytes <= limits.max_bytes {
                break;
            }
            if state.context.remove(&field).is_some() {
                report.fields_trimmed.push(field);
                bytes = encoded_len(state)?;
            }
        }
        tracing::warn!(
            agent_id = %state.agent_id,
            turns_trimmed = report.turns_trimmed_for_size,
            fields_trimmed = ?report.fields_trimmed,
            bytes,
            limit = limits.max_bytes,
            "agent state over its size limit was trimmed"
        );
    }
    if bytes > limits.max_bytes {
        // What storage will hold: compressed only over its threshold.
        let stored = if bytes > COMPRESS_ABOVE {
            let encoded = serde_json::to_vec(state).map_err(smalltalk_types::Error::Encoding)?;
            compress(&encoded).len()
        } else {
            bytes
        };
        if stored > limits.max_bytes {
            return Err(Error::AgentStateTooLarge {
                agent_id: state.agent_id.clone(),
                bytes: stored,
                limit: limits.max_bytes,
            });
        }
    }
    report.bytes = bytes;
    report.compressed = bytes > COMPRESS_ABOVE;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use smalltalk_types::{AgentId, Message, Role, Timestamp};

    use super::*;

    fn state_with(turns: usize, turn_bytes: usize) -> AgentState {
        let mut state = AgentState::new(AgentId::parse("agent").unwrap(), Timestamp::EPOCH);
        state.history = (0..turns)
            .map(|index| {
                Message::new(
                    Role::User,
                    format!("{index}:{}", "x".repeat(turn_bytes)),
                    Timestamp::EPOCH,
                )
            })
            .collect();
        state
    }

    #[test]
    fn keeps_the_newest_turns() {
        let mut state = state_with(15, 10);
        let report = preserve(&mut state, AgentStateLimits::default()).unwrap();
        assert_eq!(report.turns_over_limit, 5);
        assert_eq!(state.history.len(), 10);
        assert!(
            state.history[0].content.starts_with("5:"),
            "oldest dropped first"
        );
    }

    #[test]
    fn trims_oldest_turns_first_and_keeps_fields_when_that_suffices() {
        let limits = AgentStateLimits {
            max_turns: 10,
            max_bytes: 4096,
        };
        let mut state = state_with(10, 600);
        state
            .context
            .insert("scratch".into(), json!("y".repeat(1500)));
        state.trimmable_fields = vec!["scratch".into()];
        let report = preserve(&mut state, limits).unwrap();
        assert!(report.bytes <= 4096, "{report:?}");
        assert!(report.turns_trimmed_for_size > 0);
        assert_eq!(
            state.history.last().unwrap().content.split(':').next(),
            Some("9"),
            "newest kept"
        );
        assert!(
            report.fields_trimmed.is_empty(),
            "turns were enough: {report:?}"
        );
        assert!(state.context.contains_key("scratch"));
    }

    #[test]
    fn drops_trimmable_fields_only_after_every_turn() {
        let limits = AgentStateLimits {
            max_turns: 10,
            max_bytes: 4096,
        };
        let mut state = state_with(5, 600);
        state.context.insert("keep".into(), json!("important"));
        state
            .context
            .insert("scratch".into(), json!("y".repeat(5000)));
        state.trimmable_fields = vec!["missing".into(), "scratch".into()];
        let report = preserve(&mut state, limits).unwrap();
        assert_eq!(report.turns_trimmed_for_size, 5);
        assert!(state.history.is_empty());
        assert_eq!(report.fields_trimmed, ["scratch"]);
        assert_eq!(state.context["keep"], json!("important"));
        assert!(report.bytes <= 4096);
    }

    #[test]
    fn refuses_what_stays_too_large_compressed_and_accepts_what_compresses() {
        let limits = AgentStateLimits {
            max_turns: 10,
            max_bytes: 2048,
        };
        let mut compressible = state_with(0, 0);
        compressible
            .context
            .insert("data".into(), json!("z".repeat(200_000)));
        let report = preserve(&mut compressible, limits).expect("compresses under the limit");
        assert!(report.compressed);

        // Under the compression threshold it is stored as is: too large.
        let mut plain = state_with(0, 0);
        plain
            .context
            .insert("data".into(), json!("z".repeat(10_000)));
        assert!(matches!(
            preserve(&mut plain, limits),
            Err(Error::AgentStateTooLarge { .. })
        ));

        let mut random = state_with(0, 0);
        let mut seed: u64 = 42;
        let noise: String = (0..200_000)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                char::from(b'!' + ((seed >> 33) % 90) as u8)
            })
            .collect();
        random.context.insert("data".into(), json!(noise));
        let refused = preserve(&mut random, limits);
        assert!(
            matches!(refused, Err(Error::AgentStateTooLarge { limit: 2048, .. })),
            "{refused:?}"
        );
    }
}
