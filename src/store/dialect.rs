//! Where the three SQL dialects differ — and the only place that knows it.
//!
//! Queries are written once with `?` placeholders; [`Dialect::sql`] rewrites them to `$1…` for
//! PostgreSQL. Upserts, migrations and connection pragmas are chosen here too.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};

/// Embed each listed migration file from the three dialect folders.
macro_rules! migration_files {
    ($($version:literal $file:literal),* $(,)?) => {
        [
            &[$(($version, $file, include_str!(concat!("../../migrations/sqlite/", $file)))),*],
            &[$(($version, $file, include_str!(concat!("../../migrations/postgres/", $file)))),*],
            &[$(($version, $file, include_str!(concat!("../../migrations/mysql/", $file)))),*],
        ]
    };
}

/// Every migration, in order: `version "file"`; the file exists in each dialect's folder.
type MigrationFiles = [&'static [(i64, &'static str, &'static str)]; 3];
const MIGRATIONS: MigrationFiles = migration_files![
    1 "0001_users.sql",
    2 "0002_access_tokens.sql",
    3 "0003_notifications.sql",
    4 "0004_messages.sql",
    5 "0005_session_changes.sql",
];

/// The database behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    /// Pick the dialect from a connection URL (already validated by the config).
    pub fn from_url(url: &str) -> Self {
        if url.starts_with("postgres") {
            Self::Postgres
        } else if url.starts_with("mysql") || url.starts_with("mariadb") {
            Self::MySql
        } else {
            Self::Sqlite
        }
    }

    /// `query` with its `?` placeholders in this dialect's syntax. No query of ours has a `?`
    /// inside a string literal, which keeps this rewrite trivial.
    pub fn sql(self, query: &str) -> String {
        if self != Self::Postgres {
            return query.to_string();
        }
        let mut out = String::with_capacity(query.len() + 8);
        let mut n = 0;
        for ch in query.chars() {
            if ch == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(ch);
            }
        }
        out
    }

    /// `INSERT … ON CONFLICT (keys) DO UPDATE SET` in this dialect. `updates` are
    /// `(column, expression)` pairs where `NEW(col)` stands for the inserted value and `OLD(col)`
    /// for the existing one.
    pub fn upsert(
        self,
        table: &str,
        columns: &[&str],
        conflict: &[&str],
        updates: &[(&str, &str)],
    ) -> String {
        let placeholders = vec!["?"; columns.len()].join(", ");
        let mut sql = format!(
            "INSERT INTO {table} ({}) VALUES ({placeholders}) ",
            columns.join(", ")
        );
        let (new, old) = match self {
            Self::MySql => ("VALUES(", ""),
            Self::Sqlite | Self::Postgres => ("excluded.", ""),
        };
        let sets: Vec<String> = updates
            .iter()
            .map(|(column, expr)| {
                let expr = rewrite_refs(expr, "NEW(", new, self == Self::MySql);
                let expr = rewrite_refs(&expr, "OLD(", &format!("{old}{table}."), false);
                format!("{column} = {expr}")
            })
            .collect();
        match self {
            Self::MySql => sql.push_str("ON DUPLICATE KEY UPDATE "),
            Self::Sqlite | Self::Postgres => sql.push_str(&format!(
                "ON CONFLICT ({}) DO UPDATE SET ",
                conflict.join(", ")
            )),
        }
        sql.push_str(&sets.join(", "));
        self.sql(&sql)
    }

    /// `INSERT` that silently does nothing when the row (by `keys`) exists.
    pub fn insert_ignore(self, table: &str, columns: &[&str], keys: &[&str]) -> String {
        let placeholders = vec!["?"; columns.len()].join(", ");
        let columns = columns.join(", ");
        let sql = match self {
            Self::MySql => {
                format!("INSERT IGNORE INTO {table} ({columns}) VALUES ({placeholders})")
            }
            Self::Sqlite | Self::Postgres => format!(
                "INSERT INTO {table} ({columns}) VALUES ({placeholders}) ON CONFLICT ({}) DO NOTHING",
                keys.join(", ")
            ),
        };
        self.sql(&sql)
    }

    /// Whether an `INSERT` must ask for its new `id` with `RETURNING id` (PostgreSQL, and
    /// SQLite, whose `Any` driver reports no insert id) rather than reading it from the result
    /// (`last_insert_id`, MySQL, which has no `RETURNING`).
    pub fn insert_returns_id(self) -> bool {
        self != Self::MySql
    }

    /// How the dispatcher claims due rows without two nodes taking the same one.
    pub fn claim_strategy(self, server_version: &str) -> ClaimStrategy {
        match self {
            Self::Postgres => ClaimStrategy::SkipLocked,
            Self::MySql if mysql_has_skip_locked(server_version) => ClaimStrategy::SkipLocked,
            Self::MySql | Self::Sqlite => ClaimStrategy::ConditionalUpdate,
        }
    }

    /// The embedded migrations of this dialect, version-numbered alike across dialects.
    pub fn migrator(self) -> Migrator {
        let files = match self {
            Self::Sqlite => MIGRATIONS[0],
            Self::Postgres => MIGRATIONS[1],
            Self::MySql => MIGRATIONS[2],
        };
        let migrations = files
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*name),
                    MigrationType::Simple,
                    Cow::Borrowed(*sql),
                    false,
                )
            })
            .collect::<Vec<_>>();
        Migrator {
            migrations: Cow::Owned(migrations),
            ..Migrator::DEFAULT
        }
    }

    /// Statements run on every new connection.
    pub fn connection_setup(self) -> &'static [&'static str] {
        match self {
            // WAL lets readers proceed during a login's write; NORMAL sync is durable across
            // process crashes (the usual choice with WAL).
            Self::Sqlite => &["PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL"],
            Self::Postgres | Self::MySql => &[],
        }
    }
}

/// How due rows are claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimStrategy {
    /// `SELECT … FOR UPDATE SKIP LOCKED` then `UPDATE` in one transaction: nodes never wait
    /// for each other and never pick the same row (PostgreSQL, MySQL ≥ 8.0, MariaDB ≥ 10.6).
    SkipLocked,
    /// Select candidates, then `UPDATE … WHERE id = ? AND state = 'pending'` per row: the one
    /// whose update changes the row owns it (SQLite, which locks the whole file per write, and
    /// older MySQL/MariaDB).
    ConditionalUpdate,
}

/// `SELECT VERSION()` of MySQL (`8.0.36`) or MariaDB (`10.11.19-MariaDB-0+deb12u1`): does it
/// know `SKIP LOCKED`?
fn mysql_has_skip_locked(version: &str) -> bool {
    let mut numbers = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let major = numbers.next().unwrap_or(0);
    let minor = numbers.next().unwrap_or(0);
    if version.to_ascii_lowercase().contains("mariadb") {
        (major, minor) >= (10, 6)
    } else {
        major >= 8
    }
}

/// Replace `MARK(col)` with `prefix col` (closing with `)` when `keep_paren`).
fn rewrite_refs(expr: &str, mark: &str, prefix: &str, keep_paren: bool) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(start) = rest.find(mark) {
        out.push_str(&rest[..start]);
        let after = &rest[start + mark.len()..];
        let end = after.find(')').unwrap_or(after.len());
        out.push_str(prefix);
        out.push_str(&after[..end]);
        if keep_paren {
            out.push(')');
        }
        rest = after.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_gets_numbered_placeholders() {
        assert_eq!(
            Dialect::Postgres.sql("a = ? AND b = ?"),
            "a = $1 AND b = $2"
        );
        assert_eq!(Dialect::MySql.sql("a = ?"), "a = ?");
    }

    #[test]
    fn upserts_are_spelled_per_dialect() {
        let updates = [("k", "COALESCE(NEW(k), OLD(k))")];
        assert_eq!(
            Dialect::Sqlite.upsert("t", &["a", "k"], &["a"], &updates),
            "INSERT INTO t (a, k) VALUES (?, ?) ON CONFLICT (a) DO UPDATE SET k = COALESCE(excluded.k, t.k)"
        );
        assert_eq!(
            Dialect::MySql.upsert("t", &["a", "k"], &["a"], &updates),
            "INSERT INTO t (a, k) VALUES (?, ?) ON DUPLICATE KEY UPDATE k = COALESCE(VALUES(k), t.k)"
        );
        assert!(
            Dialect::Postgres
                .upsert("t", &["a", "k"], &["a"], &updates)
                .contains("VALUES ($1, $2)")
        );
    }

    #[test]
    fn skip_locked_is_used_where_the_server_has_it() {
        let cases = [
            (Dialect::Postgres, "", ClaimStrategy::SkipLocked),
            (Dialect::Sqlite, "", ClaimStrategy::ConditionalUpdate),
            (Dialect::MySql, "8.0.36", ClaimStrategy::SkipLocked),
            (
                Dialect::MySql,
                "5.7.44-log",
                ClaimStrategy::ConditionalUpdate,
            ),
            (
                Dialect::MySql,
                "10.11.19-MariaDB-0+deb12u1",
                ClaimStrategy::SkipLocked,
            ),
            (Dialect::MySql, "10.6.0-MariaDB", ClaimStrategy::SkipLocked),
            (
                Dialect::MySql,
                "10.5.23-MariaDB",
                ClaimStrategy::ConditionalUpdate,
            ),
        ];
        for (dialect, version, expected) in cases {
            assert_eq!(
                dialect.claim_strategy(version),
                expected,
                "{dialect:?} {version}"
            );
        }
    }
}
