//! A group's workflow: tasks with a status, an assignee and dependencies,
//! saved with the group at every turn boundary.

use serde::{Deserialize, Serialize};
use smalltalk_types::AgentId;

use crate::{Error, Result};

/// The most tasks one workflow holds: the workflow is in the group
/// record, written at every turn, so it stays small (at most about 1.2 MiB
/// with every title at its longest).
pub const MAX_TASKS: usize = 256;

/// The most tasks one task may depend on.
pub const MAX_DEPENDENCIES: usize = 32;

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskStatus {
    /// Not started.
    Pending,
    /// Someone is on it (only once its dependencies are completed).
    InProgress,
    /// Done (only once its dependencies are completed).
    Completed,
    /// Given up.
    Failed,
}

/// One task of a [`Workflow`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Unique within the workflow: 1 to 128 bytes.
    pub id: String,
    /// What to do.
    pub title: String,
    /// Where it stands.
    pub status: TaskStatus,
    /// Who does it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<AgentId>,
    /// Tasks that must be completed first (already in the workflow).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

impl Task {
    /// A pending task.
    pub fn new(id: impl Into<String>, title: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            title: title.into(),
            status: TaskStatus::Pending,
            assignee: None,
            depends_on: Vec::new(),
        }
    }

    /// Assigned to `agent`.
    pub fn assign(mut self, agent: AgentId) -> Self {
        self.assignee = Some(agent);
        self
    }

    /// Depending on `task`.
    pub fn after(mut self, task: impl Into<String>) -> Self {
        self.depends_on.push(task.into());
        self
    }
}

/// A task queue with dependencies. Dependencies must exist when a task is
/// added, so the graph has no cycles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workflow {
    /// The tasks, in the order they were added.
    pub tasks: Vec<Task>,
}

impl Workflow {
    /// The task `id`.
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.iter().find(|task| task.id == id)
    }

    /// Adds a task.
    pub fn add(&mut self, task: Task) -> Result<()> {
        let refuse = |reason: String| Err(Error::Workflow { reason });
        if task.id.is_empty() || task.id.len() > 128 {
            return refuse("a task id has 1 to 128 bytes".into());
        }
        if task.title.len() > crate::spec::MAX_TEXT_LEN {
            return refuse(format!("task {}'s title is too long", task.id));
        }
        if self.tasks.len() >= MAX_TASKS {
            return refuse(format!("a workflow holds at most {MAX_TASKS} tasks"));
        }
        if self.task(&task.id).is_some() {
            return refuse(format!("task {} exists already", task.id));
        }
        if task.depends_on.len() > MAX_DEPENDENCIES {
            return refuse(format!(
                "task {} depends on more than {MAX_DEPENDENCIES} tasks",
                task.id
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = task
            .depends_on
            .iter()
            .find(|dep| !seen.insert(dep.as_str()))
        {
            return refuse(format!("task {} names {twice} twice", task.id));
        }
        if let Some(missing) = task.depends_on.iter().find(|dep| self.task(dep).is_none()) {
            return refuse(format!(
                "task {} depends on unknown task {missing}",
                task.id
            ));
        }
        if task.status != TaskStatus::Pending && task.status != TaskStatus::Failed {
            self.check_ready(&task)?;
        }
        self.tasks.push(task);
        Ok(())
    }

    /// Moves task `id` to `status`: in progress and completed only once
    /// every dependency is completed.
    pub fn set_status(&mut self, id: &str, status: TaskStatus) -> Result<()> {
        let task = self.task(id).cloned().ok_or_else(|| Error::Workflow {
            reason: format!("no task {id}"),
        })?;
        if matches!(status, TaskStatus::InProgress | TaskStatus::Completed) {
            self.check_ready(&task)?;
        }
        if let Some(task) = self.tasks.iter_mut().find(|task| task.id == id) {
            task.status = status;
        }
        Ok(())
    }

    /// Assigns task `id` to `agent` (or to no one).
    pub fn assign(&mut self, id: &str, agent: Option<AgentId>) -> Result<()> {
        let task = self
            .tasks
            .iter_mut()
            .find(|task| task.id == id)
            .ok_or_else(|| Error::Workflow {
                reason: format!("no task {id}"),
            })?;
        task.assignee = agent;
        Ok(())
    }

    /// Pending tasks whose dependencies are all completed.
    pub fn ready(&self) -> impl Iterator<Item = &Task> {
        self.tasks
            .iter()
            .filter(|task| task.status == TaskStatus::Pending && self.check_ready(task).is_ok())
    }

    /// Whether every task is completed (true for an empty workflow).
    pub fn is_complete(&self) -> bool {
        self.tasks
            .iter()
            .all(|task| task.status == TaskStatus::Completed)
    }

    fn check_ready(&self, task: &Task) -> Result<()> {
        match task.depends_on.iter().find(|dep| {
            self.task(dep)
                .is_none_or(|dep| dep.status != TaskStatus::Completed)
        }) {
            Some(blocking) => Err(Error::Workflow {
                reason: format!("task {} waits for task {blocking}", task.id),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_gate_progress() {
        let mut workflow = Workflow::default();
        workflow.add(Task::new("research", "find sources")).unwrap();
        workflow
            .add(Task::new("draft", "write").after("research"))
            .unwrap();
        assert!(
            workflow.add(Task::new("draft", "again")).is_err(),
            "unique ids"
        );
        assert!(
            workflow.add(Task::new("x", "y").after("nope")).is_err(),
            "known deps"
        );
        assert_eq!(
            workflow.ready().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["research"]
        );
        let blocked = workflow.set_status("draft", TaskStatus::InProgress);
        assert!(
            matches!(blocked, Err(Error::Workflow { .. })),
            "{blocked:?}"
        );
        workflow
            .set_status("research", TaskStatus::Completed)
            .unwrap();
        workflow
            .set_status("draft", TaskStatus::InProgress)
            .unwrap();
        assert!(!workflow.is_complete());
        workflow.set_status("draft", TaskStatus::Completed).unwrap();
        assert!(workflow.is_complete());
        assert!(workflow.set_status("ghost", TaskStatus::Failed).is_err());
    }
}
