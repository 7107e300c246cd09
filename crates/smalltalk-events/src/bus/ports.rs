//! The bus as the ports capability crates publish and replay through.

use super::EventBus;
use crate::{Draft, Error, PublishOptions, ReplayOptions};

/// The bus as the [`EventSink`](smalltalk_types::EventSink) port: what
/// capability crates announce (for example the session manager's
/// `session:created`) is published with the announcement's topic,
/// priority, scope and payload. A publish that fails is logged at WARN and
/// dropped: announcing never fails the caller.
#[async_trait::async_trait]
impl smalltalk_types::EventSink for EventBus {
    async fn announce(&self, announcement: smalltalk_types::Announcement) {
        let topic = announcement.topic.to_string();
        let mut options = PublishOptions::default().priority(announcement.priority);
        options.session_id = announcement.session_id;
        options.conversation_id = announcement.conversation_id;
        options = options.meta("announcedAt", announcement.timestamp.to_string());
        let draft = Draft {
            topic: announcement.topic,
            payload: announcement.payload.into(),
            options,
        };
        if let Err(error) = self.publish_drafts(vec![draft], None).await {
            tracing::warn!(%topic, %error, "could not publish an announcement; dropped");
        }
    }
}

/// The bus as the [`MissedEventReplayer`](smalltalk_types::MissedEventReplayer)
/// port: a recovered agent's subscriptions (its id as subscriber id) get
/// again what was published since it went down.
#[async_trait::async_trait]
impl smalltalk_types::MissedEventReplayer for EventBus {
    async fn replay_missed(
        &self,
        agent_id: &smalltalk_types::AgentId,
        since: smalltalk_types::Timestamp,
    ) -> std::result::Result<smalltalk_types::ReplayCounts, smalltalk_types::BoxError> {
        // What it missed was live: imported history is not part of it.
        let options = ReplayOptions {
            since: Some(since),
            skip_imported: true,
            ..ReplayOptions::default()
        };
        match self.replay(agent_id.as_str(), options).await {
            Ok(report) => Ok(smalltalk_types::ReplayCounts {
                delivered: report.delivered,
                failed: report.failed,
            }),
            Err(Error::UnknownSubscriber { .. } | Error::Invalid(_)) => {
                Ok(smalltalk_types::ReplayCounts::default())
            }
            Err(error) => Err(error.into()),
        }
    }
}
