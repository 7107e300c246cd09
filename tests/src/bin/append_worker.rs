//! A writer process for multi-process tests:
//! `append-worker STORAGE_URL SESSION_ID WORKER COUNT` appends COUNT
//! messages `WORKER:i` one call at a time, then prints `done`.

use anyhow::Context;
use smalltalk::{AppendGuard, Message, Role, SessionId, Timestamp};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, session, worker, count] = args.as_slice() else {
        anyhow::bail!("usage: append-worker STORAGE_URL SESSION_ID WORKER COUNT");
    };
    let session = SessionId::parse(session)?;
    let count: usize = count.parse().context("COUNT")?;
    let store = smalltalk::open(url).await?;
    for index in 0..count {
        let message = Message::new(Role::User, format!("{worker}:{index}"), Timestamp::now());
        store
            .append_messages(session, &[message], AppendGuard::NONE)
            .await?;
    }
    store.close().await?;
    println!("done");
    Ok(())
}
