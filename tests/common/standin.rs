//! The Appwrite stand-in served in the test's own process (test infrastructure held to the
//! official spec), and `cutover` run against it.

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use appwrite_standin::StandIn;

use super::World;

/// A stand-in listening on a free loopback port, with its API key.
pub struct Aw {
    pub s: Arc<StandIn>,
    pub endpoint: String,
    pub key: &'static str,
}

impl Aw {
    /// Project `cutover`, API key `key`, columns available after 20 ms.
    pub async fn start(key: &'static str) -> Aw {
        Aw::start_with(key, Duration::from_millis(20)).await
    }

    /// As [`Aw::start`], columns available after `column_delay`.
    pub async fn start_with(key: &'static str, column_delay: Duration) -> Aw {
        // reqwest's TLS needs a provider even for plain HTTP (the tests' own clients).
        cutover::sink::appwrite::install_crypto_provider();
        let mut s = StandIn::new("cutover", key);
        s.column_delay = column_delay;
        let s = Arc::new(s);
        let (addr, _) = appwrite_standin::serve(s.clone(), "127.0.0.1:0")
            .await
            .unwrap();
        Aw {
            s,
            endpoint: format!("http://{addr}/v1"),
            key,
        }
    }

    /// The variables that point `cutover` at this stand-in and its database `db`.
    pub fn vars(&self, db: &str) -> [(&'static str, String); 4] {
        [
            ("APPWRITE_ENDPOINT", self.endpoint.clone()),
            ("APPWRITE_PROJECT", "cutover".to_string()),
            ("APPWRITE_API_KEY", self.key.to_string()),
            ("APPWRITE_DATABASE", db.to_string()),
        ]
    }

    /// The id of the table of database `db` whose id contains `part` (a child table).
    pub fn table_containing(&self, db: &str, part: &str) -> String {
        let tables = self.s.list_tables(db, &Vec::new()).unwrap();
        tables["tables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["$id"].as_str())
            .find(|t| t.contains(part))
            .unwrap_or_else(|| panic!("no table with {part} in its id: {tables}"))
            .to_string()
    }

    /// `cutover ARGS…` in the world against database `db`, off the runtime serving the stand-in.
    pub async fn cutover_in(&self, w: &World, db: &str, args: &[&str]) -> Output {
        let mut cmd = w.cutover();
        cmd.envs(self.vars(db)).args(args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }
}
