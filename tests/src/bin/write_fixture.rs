//! Writes the stored-data fixture (see `smalltalk_e2e::fixture`):
//! `write-fixture STORAGE_URL`. Run once per release whose format must stay
//! readable; the result is committed under `tests/fixtures/`.

use smalltalk_e2e::fixture;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url] = args.as_slice() else {
        anyhow::bail!("usage: write-fixture STORAGE_URL");
    };
    let store = smalltalk::open(url).await?;
    let content = fixture::content();
    fixture::write(store.as_ref(), &content).await?;
    fixture::check(store.as_ref(), &content).await?;
    store.close().await?;
    println!("written");
    Ok(())
}
