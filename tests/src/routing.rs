//! The labelled routing cases (`fixtures/routing_cases.json`, SC-014):
//! each is a group, a history, and the participant who should speak next.
//! [`route`] puts a case's history into a real group (through the
//! manager, as turns) and asks the group's LLM selector who speaks next.
//! CI runs them against the mock server (which checks the pipeline
//! validates every answer); the report runs them against a real model.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail, ensure};
use serde::Deserialize;
use smalltalk::AgentId;
use smalltalk::groups::llm::LlmClient;
use smalltalk::groups::{
    Agent, GroupHooks, GroupManager, GroupSpec, Participant, ScriptedAgent, Selection, Strategy,
};

/// The fixture, compiled in.
const CASES: &str = include_str!("../fixtures/routing_cases.json");

/// The author of a user message in a case's history.
pub const USER: &str = "user";

/// Every case, with the groups they use.
#[derive(Debug, Deserialize)]
pub struct RoutingCases {
    /// The group templates, by name.
    pub groups: BTreeMap<String, Vec<Member>>,
    /// The cases.
    pub cases: Vec<RoutingCase>,
}

/// A participant of a group template.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Its id.
    pub agent_id: AgentId,
    /// Its role.
    pub role: String,
    /// What it does.
    pub description: String,
}

/// One labelled case.
#[derive(Debug, Clone, Deserialize)]
pub struct RoutingCase {
    /// A unique name.
    pub name: String,
    /// The group template.
    pub group: String,
    /// What was said, oldest first; the first is the user's.
    pub history: Vec<Said>,
    /// Who should speak next.
    pub expected: AgentId,
}

/// One message of a case's history.
#[derive(Debug, Clone, Deserialize)]
pub struct Said {
    /// [`USER`] or a participant's id.
    pub from: String,
    /// The text.
    pub text: String,
}

impl RoutingCases {
    /// Reads and checks the fixture.
    pub fn load() -> anyhow::Result<Self> {
        let cases: RoutingCases =
            serde_json::from_str(CASES).context("fixtures/routing_cases.json")?;
        for case in &cases.cases {
            let members = cases.members(case)?;
            let known = |id: &str| members.iter().any(|member| member.agent_id.as_str() == id);
            ensure!(
                known(case.expected.as_str()),
                "{}: expects a stranger",
                case.name
            );
            ensure!(
                case.history.first().is_some_and(|said| said.from == USER),
                "{}: the history starts with the user",
                case.name
            );
            if let Some(said) = case
                .history
                .iter()
                .find(|said| said.from != USER && !known(&said.from))
            {
                bail!(
                    "{}: {} is not in group {}",
                    case.name,
                    said.from,
                    case.group
                );
            }
        }
        Ok(cases)
    }

    /// The participants of `case`'s group.
    pub fn members(&self, case: &RoutingCase) -> anyhow::Result<&[Member]> {
        self.groups
            .get(&case.group)
            .map(Vec::as_slice)
            .with_context(|| format!("{}: no group {}", case.name, case.group))
    }

    /// The participants of `case`'s group, for a [`GroupSpec`].
    pub fn participants(&self, case: &RoutingCase) -> anyhow::Result<Vec<Participant>> {
        Ok(self
            .members(case)?
            .iter()
            .map(|member| {
                Participant::new(member.agent_id.clone(), member.role.clone())
                    .description(member.description.clone())
            })
            .collect())
    }
}

/// Puts `case`'s history into a new LLM-selected group (each user message
/// starts a round, the agents' messages are its turns), then asks the
/// group's selector who speaks next.
pub async fn route(
    cases: &RoutingCases,
    case: &RoutingCase,
    selector: LlmClient,
) -> anyhow::Result<Selection> {
    // Each agent says its lines of the history, in order.
    let mut agents = Vec::new();
    for member in cases.members(case)? {
        let lines = case
            .history
            .iter()
            .filter(|said| said.from == member.agent_id.as_str());
        let agent = lines.fold(
            ScriptedAgent::new(member.agent_id.clone()),
            |agent, said| agent.then_reply(said.text.clone()),
        );
        agents.push(Arc::new(agent) as Arc<dyn Agent>);
    }
    let store = smalltalk::open("memory://").await?;
    let mut builder = GroupManager::builder(store).selector_llm(selector);
    for agent in agents {
        builder = builder.agent(agent);
    }
    let groups = builder.build()?;
    let spec = GroupSpec::new(cases.participants(case)?).strategy(Strategy::LlmBased);
    let group = groups.create_group(spec).await?.id;

    // While the history is replayed, a custom selector names each line's
    // author, and once a round's lines are said no one may speak.
    let next: Arc<Mutex<VecDeque<AgentId>>> = Arc::default();
    let authors = Arc::clone(&next);
    let pending = Arc::clone(&next);
    groups
        .set_hooks(
            group,
            GroupHooks::default()
                .selector(move |_| lock(&authors).pop_front())
                .filter(move |_, _| !lock(&pending).is_empty()),
        )
        .await?;
    let mut rounds = Vec::new();
    for said in &case.history {
        if said.from == USER {
            rounds.push((said.text.as_str(), Vec::new()));
        } else if let Some((_, turns)) = rounds.last_mut() {
            turns.push(AgentId::parse(&said.from)?);
        }
    }
    for (text, turns) in rounds {
        let expected = turns.len();
        lock(&next).extend(turns);
        let outcome = groups.handle_message(group, text).await?;
        ensure!(
            outcome.turns.len() == expected,
            "{}: replaying the history took {} turns, not {expected}",
            case.name,
            outcome.turns.len()
        );
    }
    groups.set_hooks(group, GroupHooks::default()).await?;
    let selection = groups
        .select_speaker(group)
        .await?
        .with_context(|| format!("{}: no one may speak", case.name))?;
    groups.close().await;
    Ok(selection)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
