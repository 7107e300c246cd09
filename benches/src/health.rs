//! Health-monitor measurements for the report:
//!
//! - `monitor_cpu`: the process's CPU time while a monitor with the default
//!   intervals watches N idle in-process agents, as a percentage of one core
//!   (SC-010). Nothing else runs in the window.
//! - `detection`: from an agent's last good heartbeat to it being
//!   `disconnected` after it stops answering, with a 100 ms interval and 2
//!   missed beats (SC-003: target interval x missed + 50 ms);
//! - `detection_hung_default`: the same with the default configuration and
//!   agents that never answer again (their calls hang, no error comes).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use smalltalk_health::{
    AgentError, AgentHealthMonitor, HealthConfig, Heartbeat, MonitoredAgent, process_cpu_time,
};
use smalltalk_types::{AgentState, HealthState, RecoveryKind, RecoveryStrategy, Timestamp};

use crate::Samples;

/// An in-process agent that answers unless told it is down.
#[derive(Debug, Default)]
struct Switchable {
    down: AtomicBool,
}

#[async_trait]
impl MonitoredAgent for Switchable {
    async fn heartbeat(&self) -> Result<Heartbeat, AgentError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(AgentError::Failed("down".into()));
        }
        Ok(Heartbeat::idle(0))
    }

    async fn probe(&self) -> Result<(), AgentError> {
        Ok(())
    }

    async fn restart(&self, _state: Option<AgentState>) -> Result<(), AgentError> {
        self.down.store(false, Ordering::Relaxed);
        Ok(())
    }
}

/// SC-010: percent of one core the process uses over `window` while a
/// default-configured monitor watches `agents` healthy agents.
pub async fn monitor_cpu(agents: usize, window: Duration) -> f64 {
    let monitor = AgentHealthMonitor::builder().build().expect("monitor");
    for index in 0..agents {
        monitor
            .register(
                format!("agent-{index}"),
                Arc::new(Switchable::default()),
                RecoveryStrategy::default(),
                None,
            )
            .expect("register");
    }
    let sweeper = monitor.spawn();
    // One round of heartbeats first, so the window is steady state.
    tokio::time::sleep(monitor.config().heartbeat_interval).await;
    let cpu_before = process_cpu_time().expect("CPU time (Linux)");
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let cpu = process_cpu_time().expect("CPU time") - cpu_before;
    let wall = started.elapsed();
    sweeper.stop();
    assert_eq!(
        monitor.stats().agents.get(&HealthState::Active).copied(),
        Some(agents),
        "every agent stayed healthy"
    );
    cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
}

/// SC-003: `count` detections of an agent that stops answering.
pub async fn detection(count: usize) -> Samples {
    let monitor = AgentHealthMonitor::builder()
        .config(HealthConfig {
            heartbeat_interval: Duration::from_millis(100),
            activity_timeout: Duration::from_millis(50),
            max_missed: 2,
            probe_interval: Duration::from_secs(3600),
            ..HealthConfig::default()
        })
        .build()
        .expect("monitor");
    let agent = Arc::new(Switchable::default());
    let alert_only = RecoveryStrategy {
        kind: RecoveryKind::Alert,
        ..RecoveryStrategy::default()
    };
    monitor
        .register("target", agent.clone(), alert_only, None)
        .expect("register");
    let sweeper = monitor.spawn();
    let mut latencies = Vec::with_capacity(count);
    let patience = Duration::from_secs(10);
    for round in 0..count {
        // Healthy first, with a fresh good heartbeat; then it stops, at a
        // varying point between heartbeats.
        agent.down.store(false, Ordering::Relaxed);
        let back = monitor
            .wait_for_state("target", HealthState::Active, patience)
            .await
            .expect("known agent");
        assert!(back, "the agent came back");
        tokio::time::sleep(Duration::from_millis(120 + (round as u64 * 7) % 90)).await;
        agent.down.store(true, Ordering::Relaxed);
        let detected = monitor
            .wait_for_state("target", HealthState::Disconnected, patience)
            .await
            .expect("known agent");
        let at = Timestamp::now();
        assert!(detected, "the failure was detected");
        let last_good = monitor
            .status("target")
            .expect("known agent")
            .last_heartbeat
            .expect("had a heartbeat");
        latencies.push(at.duration_since(last_good));
    }
    sweeper.stop();
    Samples::from_durations(latencies)
}

/// An in-process agent that answers until told to hang, then never
/// answers again (heartbeat and probe pending for ever).
#[derive(Debug, Default)]
struct Hangs {
    hang: AtomicBool,
}

#[async_trait]
impl MonitoredAgent for Hangs {
    async fn heartbeat(&self) -> Result<Heartbeat, AgentError> {
        if self.hang.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        Ok(Heartbeat::idle(0))
    }

    async fn probe(&self) -> Result<(), AgentError> {
        if self.hang.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn restart(&self, _state: Option<AgentState>) -> Result<(), AgentError> {
        Ok(())
    }
}

/// SC-003 with the default configuration (2 s interval, 2 missed beats, 5 s
/// timeouts): `count` agents, each hanging at its own moment after a good
/// heartbeat; from that heartbeat to `disconnected` (target 4 s + 50 ms).
pub async fn detection_hung_default(count: usize) -> Samples {
    let monitor = AgentHealthMonitor::builder().build().expect("monitor");
    let alert_only = RecoveryStrategy {
        kind: RecoveryKind::Alert,
        ..RecoveryStrategy::default()
    };
    let agents: Vec<Arc<Hangs>> = (0..count).map(|_| Arc::new(Hangs::default())).collect();
    for (index, agent) in agents.iter().enumerate() {
        monitor
            .register(
                format!("hung-{index}"),
                agent.clone(),
                alert_only.clone(),
                None,
            )
            .expect("register");
    }
    let sweeper = monitor.spawn();
    // Every agent gets its first good beat, then they hang one by one,
    // spread over a heartbeat interval.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let spread = Duration::from_secs(2).as_micros() as u64 / count.max(1) as u64;
    let mut watchers = Vec::with_capacity(count);
    for (index, agent) in agents.iter().enumerate() {
        tokio::time::sleep(Duration::from_micros(spread)).await;
        agent.hang.store(true, Ordering::Relaxed);
        let monitor = monitor.clone();
        let id = format!("hung-{index}");
        watchers.push(tokio::spawn(async move {
            let detected = monitor
                .wait_for_state(&id, HealthState::Disconnected, Duration::from_secs(30))
                .await
                .expect("known agent");
            let at = Timestamp::now();
            assert!(detected, "the hung agent was detected");
            let last_good = monitor
                .status(&id)
                .expect("known agent")
                .last_heartbeat
                .expect("had a heartbeat");
            at.duration_since(last_good)
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    for watcher in watchers {
        latencies.push(watcher.await.expect("watcher"));
    }
    sweeper.stop();
    Samples::from_durations(latencies)
}
