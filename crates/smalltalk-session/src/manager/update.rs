//! Header changes under optimistic locking: `update`, `try_update`, blind
//! `save`, and the conflict budget (a deadline) they retry within.

use super::*;

impl SessionManager {
    /// Saves a whole snapshot (a "blind" save). If another writer changed
    /// the header since the snapshot was read, the snapshot wins (last
    /// write wins) after a WARN naming both versions, counted as a conflict.
    /// The history is never lost: it is append-only, so messages stored
    /// meanwhile are kept and the snapshot's own new messages are added
    /// after them. An invalidated session is never brought back. Prefer
    /// [`update`](Self::update), which never overwrites.
    #[tracing::instrument(skip_all, fields(session_id = %session.id), err)]
    pub async fn save(&self, session: &Session) -> Result<u64> {
        let id = session.id;
        self.flush_first(id).await?;
        let summary = self
            .inner
            .store
            .get_session_summary(id)
            .await?
            .ok_or(Error::NotFound { id })?;
        if summary.state == SessionState::Invalidated {
            return Err(Error::Invalidated { id });
        }
        let first = self
            .inner
            .store
            .save_session(session, Expected::Version(session.version))
            .await;
        let found = match first {
            Ok(version) => {
                self.track(session);
                return Ok(version);
            }
            Err(smalltalk_storage::Error::Conflict { found, .. }) => found,
            Err(smalltalk_storage::Error::HistoryDiverged { version, .. }) => version,
            Err(other) => return self.note_failure(Err(other)),
        };
        tracing::warn!(
            session_id = %id,
            snapshot_version = session.version,
            stored_version = found,
            "blind save conflicted with a newer version; last write wins"
        );
        // The header over the version we find (appends cannot make that
        // conflict), checking each time that the session was not
        // invalidated meanwhile; then the snapshot's own messages that the
        // history lacks, appended after what is stored.
        let mut header = session.clone();
        header.messages.clear();
        let mut budget = self.conflict_budget();
        let version = loop {
            if !self.retry_after_conflict(&mut budget).await {
                return Err(Error::Conflict {
                    id,
                    attempts: budget.attempts,
                });
            }
            let summary = self
                .inner
                .store
                .get_session_summary(id)
                .await?
                .ok_or(Error::NotFound { id })?;
            if summary.state == SessionState::Invalidated {
                return Err(Error::Invalidated { id });
            }
            match self
                .inner
                .store
                .save_session(&header, Expected::Version(summary.version))
                .await
            {
                Ok(version) => break version,
                Err(smalltalk_storage::Error::Conflict { .. }) => {}
                Err(other) => return self.note_failure(Err(other)),
            }
        };
        if !session.messages.is_empty() {
            let stored = self
                .inner
                .store
                .get_session(id)
                .await?
                .ok_or(Error::NotFound { id })?;
            let known: std::collections::HashSet<_> =
                stored.messages.iter().map(|message| message.id).collect();
            let missing: Vec<Message> = session
                .messages
                .iter()
                .filter(|message| !known.contains(&message.id))
                .cloned()
                .collect();
            if !missing.is_empty() {
                // Invalidated since the header went in: its history must
                // not come back.
                let appended = self
                    .inner
                    .store
                    .append_messages(id, &missing, AppendGuard::not_invalidated())
                    .await;
                if let Err(smalltalk_storage::Error::NotAccepting { .. }) = appended {
                    return Err(Error::Invalidated { id });
                }
                self.note_failure(appended)?;
            }
        }
        self.track(session);
        Ok(version)
    }

    /// A fresh retry budget for one operation: the configured deadline.
    pub(super) fn conflict_budget(&self) -> ConflictBudget {
        ConflictBudget {
            deadline: tokio::time::Instant::now() + self.inner.config.conflict_timeout,
            attempts: 0,
        }
    }

    /// After a version conflict: counts it, waits the backoff (never past
    /// the deadline) and answers whether to try again.
    pub(super) async fn retry_after_conflict(&self, budget: &mut ConflictBudget) -> bool {
        self.note_conflict();
        let now = tokio::time::Instant::now();
        let Some(left) = budget
            .deadline
            .checked_duration_since(now)
            .filter(|left| !left.is_zero())
        else {
            return false;
        };
        let pause = self
            .inner
            .config
            .conflict_backoff
            .delay(budget.attempts)
            .min(left);
        budget.attempts += 1;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        true
    }

    /// Changes a session under optimistic locking: `change` runs on the
    /// freshly read session and the result is saved only if no other header
    /// change came in between; otherwise `change` runs again on the new
    /// data (with backoff, until `conflict_timeout`), so concurrent updates
    /// are never lost. Appends do not count as changes here: however fast
    /// messages arrive, they never make an update conflict. Returns the
    /// saved session and `change`'s value.
    ///
    /// The session given to `change` has no history (`messages` is empty:
    /// the history is append-only, see [`add_message`](Self::add_message));
    /// everything else is there. To give up without writing, use
    /// [`try_update`](Self::try_update).
    ///
    /// ```
    /// # async fn demo(sessions: smalltalk_session::SessionManager, id: smalltalk_types::SessionId)
    /// # -> smalltalk_session::Result<()> {
    /// let (session, ()) = sessions
    ///     .update(id, |session| {
    ///         session.metadata.insert("topic".into(), "billing".into());
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn update<T, F>(&self, id: SessionId, mut change: F) -> Result<(Session, T)>
    where
        F: FnMut(&mut Session) -> T + Send,
        T: Send,
    {
        self.try_update(id, |session| Ok::<_, Error>(change(session)))
            .await
    }

    /// [`update`](Self::update) with a closure that may refuse: an `Err`
    /// from `change` is returned as is, in the caller's own error type, and
    /// nothing is written. Errors of the update itself (not found,
    /// invalidated, conflict past `conflict_timeout`, storage) come as
    /// `E::from(Error)`. A closure that changes the session's id gets
    /// [`Error::IdChanged`].
    ///
    /// ```
    /// # async fn demo(sessions: smalltalk_session::SessionManager, id: smalltalk_types::SessionId)
    /// # -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// #[derive(Debug, thiserror::Error)]
    /// enum Refused {
    ///     #[error("the session is locked")]
    ///     Locked,
    ///     #[error(transparent)]
    ///     Session(#[from] smalltalk_session::Error),
    /// }
    /// let outcome = sessions
    ///     .try_update(id, |session| {
    ///         if session.metadata.contains_key("locked") {
    ///             return Err(Refused::Locked);
    ///         }
    ///         session.metadata.insert("owner".into(), "planner".into());
    ///         Ok(())
    ///     })
    ///     .await;
    /// # let _ = outcome; Ok(()) }
    /// ```
    #[tracing::instrument(skip_all, fields(session_id = %id))]
    pub async fn try_update<T, E, F>(
        &self,
        id: SessionId,
        mut change: F,
    ) -> std::result::Result<(Session, T), E>
    where
        F: FnMut(&mut Session) -> std::result::Result<T, E> + Send,
        T: Send,
        E: From<Error> + Send,
    {
        let mut refused: Option<E> = None;
        let mut apply = |session: &mut Session| -> Result<Option<T>> {
            match change(session) {
                Ok(value) => {
                    check_same_id(id, session)?;
                    Ok(Some(value))
                }
                Err(error) => {
                    refused = Some(error);
                    Ok(None)
                }
            }
        };
        let changed = if self.inner.writeback.is_some() {
            self.update_buffered(id, &mut apply).await
        } else {
            self.change_header(id, |session, now| {
                check_open(session, now)?;
                apply(session)
            })
            .await
        };
        if let Some(error) = refused {
            return Err(error);
        }
        match changed {
            Ok(Some((session, value))) => {
                self.track(&session);
                Ok((session, value))
            }
            Ok(None) => unreachable!("only a refusal writes nothing"),
            Err(error) => {
                tracing::debug!(session_id = %id, %error, "update failed");
                Err(error.into())
            }
        }
    }

    /// Reads `id`'s header, lets `change` edit it (or return `None`: nothing
    /// to write), and writes it back under compare-and-swap; after a
    /// conflict (another header change: appends never conflict), runs
    /// `change` again on fresh data with backoff until `conflict_timeout`
    /// has passed. Returns the written session and the value.
    pub(super) async fn change_header<T, F>(
        &self,
        id: SessionId,
        mut change: F,
    ) -> Result<Option<(Session, T)>>
    where
        F: FnMut(&mut Session, Timestamp) -> Result<Option<T>> + Send,
        T: Send,
    {
        let mut budget = self.conflict_budget();
        loop {
            let mut session = self.stored_header(id).await?;
            let now = self.inner.clock.now();
            let loaded = session.version;
            let Some(value) = change(&mut session, now)? else {
                return Ok(None);
            };
            session.updated_at = now;
            match self
                .inner
                .store
                .save_session(&session, Expected::Version(loaded))
                .await
            {
                Ok(version) => {
                    session.version = version;
                    return Ok(Some((session, value)));
                }
                Err(smalltalk_storage::Error::Conflict { .. }) => {
                    if !self.retry_after_conflict(&mut budget).await {
                        return Err(Error::Conflict {
                            id,
                            attempts: budget.attempts + 1,
                        });
                    }
                }
                Err(other) => return self.note_failure(Err(other)),
            }
        }
    }
}

/// The retry budget of one operation after version conflicts (FR-005): a
/// deadline, not a count.
#[derive(Debug)]
pub(super) struct ConflictBudget {
    deadline: tokio::time::Instant,
    /// Retries made so far.
    attempts: u32,
}
