//! A session manager through a real network outage to PostgreSQL (a TCP
//! proxy of the test's own; the shared server is never stopped).

use smalltalk::{CreateOptions, Message, Role, SessionManager, Timestamp};
use smalltalk_e2e::FaultProxy;
use smalltalk_storage::contract::PgBackend;

fn authority(url: &str) -> &str {
    let rest = &url[url.find("://").expect("scheme") + 3..];
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    rest.split(['/', '?']).next().expect("host")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_an_outage_and_refused_ones_are_absent() {
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    let direct = backend.store_url();
    let upstream = tokio::net::lookup_host(authority(&direct))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let url = format!(
        "{}&acquire_timeout_ms=300",
        direct.replacen(authority(&direct), &proxy.address().to_string(), 1)
    );
    let sessions = SessionManager::new(smalltalk::open(&url).await.unwrap());
    let session = sessions.create(CreateOptions::default()).await.unwrap();

    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    for phase in ["before", "during", "after"] {
        match phase {
            "during" => proxy.cut(),
            "after" => proxy.restore().await.unwrap(),
            _ => {}
        }
        for index in 0..5 {
            let content = format!("{phase}-{index}");
            match sessions
                .add_message(
                    session.id,
                    Message::new(Role::User, content.clone(), Timestamp::now()),
                )
                .await
            {
                Ok(_) => acknowledged.push(content),
                Err(error) => {
                    assert!(error.is_transient(), "{error:?}");
                    refused.push(content);
                }
            }
        }
    }
    assert_eq!(
        refused.len(),
        5,
        "every write during the cut was refused: {refused:?}"
    );
    assert!(refused.iter().all(|content| content.starts_with("during")));
    let stored: Vec<String> = sessions
        .restore(session.id)
        .await
        .unwrap()
        .messages
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(
        stored, acknowledged,
        "exactly the acknowledged messages, in order"
    );
    assert_eq!(sessions.stats().await.unwrap().save_failures, 5);
}
