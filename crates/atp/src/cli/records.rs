//! `atp records list|get|proof` and `atp rejections list`: what an investigator asks the
//! gateway, with the token in `ATP_TOKEN`.

use std::io::Write as _;
use std::process::ExitCode;

use atp_gateway::query::{RecordView, RejectionView};

use super::ApiArgs;
use crate::api::{ApiClient, Query};

#[derive(clap::Subcommand)]
pub(super) enum Records {
    /// Records the filters select, newest first: one page, or every page with --all.
    List {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        filters: RecordFilters,
        /// Follow `nextCursor` to the last page (one page in memory at a time).
        #[arg(long)]
        all: bool,
        /// Records per page, 1 to 1000.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// One record as stored, its digest checked by the gateway (JSON).
    Get {
        #[command(flatten)]
        api: ApiArgs,
        /// The record's id (`recordId`, as `atp records list` prints it).
        record_id: String,
    },
    /// A record's inclusion proof against the newest signed checkpoint covering it: the JSON
    /// answer, which `atp verify record --proof` checks offline, or with --text the C2SP
    /// tlog-proof.
    Proof {
        #[command(flatten)]
        api: ApiArgs,
        /// The record's id (`recordId`).
        record_id: String,
        /// The C2SP tlog-proof text instead of JSON.
        #[arg(long)]
        text: bool,
    },
}

#[derive(clap::Subcommand)]
pub(super) enum Rejections {
    /// Submissions ATP refused, with their reason, newest first.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Rejections of this source only.
        #[arg(long)]
        source: Option<String>,
        /// Rejections with this reason code only (e.g. SIGNATURE_INVALID).
        #[arg(long)]
        reason: Option<String>,
        /// Rejected at or after this (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Rejected before this (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Follow `nextCursor` to the last page.
        #[arg(long)]
        all: bool,
        /// Rejections per page, 1 to 1000.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// The `/audit/records` filters, shared with `atp export create`.
#[derive(clap::Args, Default)]
pub(super) struct RecordFilters {
    /// Event time at or after this (RFC 3339).
    #[arg(long)]
    from: Option<String>,
    /// Event time before this (RFC 3339).
    #[arg(long)]
    to: Option<String>,
    /// This source only.
    #[arg(long)]
    source: Option<String>,
    /// Exact match on data.actor.id.
    #[arg(long)]
    actor: Option<String>,
    /// Exact match on data.action.
    #[arg(long)]
    action: Option<String>,
    /// Exact match on data.resource.type.
    #[arg(long)]
    resource_type: Option<String>,
    /// Exact match on data.resource.id.
    #[arg(long)]
    resource_id: Option<String>,
    /// Free text: a case-insensitive substring of the attributes' values.
    #[arg(long)]
    q: Option<String>,
}

impl RecordFilters {
    /// As the API names them, the set ones only.
    pub(super) fn pairs(&self) -> Query {
        [
            ("from", &self.from),
            ("to", &self.to),
            ("sourceId", &self.source),
            ("actorId", &self.actor),
            ("action", &self.action),
            ("resourceType", &self.resource_type),
            ("resourceId", &self.resource_id),
            ("q", &self.q),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Format {
    /// Aligned columns, for reading.
    Table,
    /// One JSON array of every item.
    Json,
    /// One JSON object per line, as each page arrives.
    Ndjson,
    /// One id per line (records: `recordId`; rejections: the event's `id`), for scripts:
    /// `RECORD=$(atp records list --limit 1 --format ids)`.
    Ids,
}

pub(super) async fn run_records(cmd: Records) -> anyhow::Result<ExitCode> {
    match cmd {
        Records::List {
            api,
            filters,
            all,
            limit,
            format,
        } => {
            let client = api.client()?;
            let mut query = filters.pairs();
            query.push(("limit", limit.to_string()));
            let out = Output::new(format, &RECORD_COLUMNS);
            page_through(query, all, out, |q| {
                let client = &client;
                async move {
                    let page = client.records(&q).await?;
                    let items = page
                        .items
                        .iter()
                        .map(|r| {
                            Ok(Item {
                                value: serde_json::to_value(r)?,
                                row: record_row(r),
                                id: r.record_id.clone(),
                            })
                        })
                        .collect::<anyhow::Result<_>>()?;
                    Ok((items, page.next_cursor))
                }
            })
            .await
        }
        Records::Get { api, record_id } => {
            let r = api.client()?.record(&record_id).await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        Records::Proof {
            api,
            record_id,
            text,
        } => {
            let client = api.client()?;
            if text {
                print!("{}", client.proof_text(&record_id).await?);
            } else {
                let proof = client.proof(&record_id).await?;
                println!("{}", serde_json::to_string_pretty(&proof)?);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(super) async fn run_rejections(cmd: Rejections) -> anyhow::Result<ExitCode> {
    let Rejections::List {
        api,
        source,
        reason,
        from,
        to,
        all,
        limit,
        format,
    } = cmd;
    let client: ApiClient = api.client()?;
    let mut query: Query = [
        ("sourceId", source),
        ("reason", reason),
        ("from", from),
        ("to", to),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    query.push(("limit", limit.to_string()));
    let out = Output::new(format, &REJECTION_COLUMNS);
    page_through(query, all, out, |q| {
        let client = &client;
        async move {
            let page = client.rejections(&q).await?;
            let items = page
                .items
                .iter()
                .map(|r| {
                    Ok(Item {
                        value: serde_json::to_value(r)?,
                        row: rejection_row(r),
                        id: r.event_id.clone().unwrap_or_else(|| "-".to_owned()),
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            Ok((items, page.next_cursor))
        }
    })
    .await
}

/// One listed item in each form a format may print.
struct Item {
    value: serde_json::Value,
    row: Vec<String>,
    id: String,
}

/// Prints the items of the page `fetch` answers for `query`, then of each next page while
/// `all` (with ndjson and ids, one page in memory at a time).
async fn page_through<F, Fut>(
    query: Query,
    all: bool,
    mut out: Output,
    mut fetch: F,
) -> anyhow::Result<ExitCode>
where
    F: FnMut(Query) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Vec<Item>, Option<String>)>>,
{
    let mut cursor: Option<String> = None;
    loop {
        let mut q = query.clone();
        q.extend(cursor.take().map(|c| ("cursor", c)));
        let (items, next) = fetch(q).await?;
        for item in items {
            out.item(item)?;
        }
        match next {
            Some(c) if all => cursor = Some(c),
            Some(_) => {
                out.finish()?;
                eprintln!("(more: --all follows every page)");
                return Ok(ExitCode::SUCCESS);
            }
            None => break,
        }
    }
    out.finish()?;
    Ok(ExitCode::SUCCESS)
}

const RECORD_COLUMNS: [&str; 7] = [
    "recordId",
    "occurredAt",
    "source",
    "actor",
    "action",
    "resource",
    "chain",
];

fn record_row(r: &RecordView) -> Vec<String> {
    let data = &r.data;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        // A value the caller may not read: `{"redacted": "<classification>"}`.
        other => other
            .get("redacted")
            .and_then(|c| c.as_str())
            .map_or_else(|| other.to_string(), |c| format!("[{c}]")),
    };
    vec![
        r.record_id.clone(),
        r.occurred_at.clone(),
        r.source_id.clone(),
        text(&data["actor"]["id"]),
        text(&data["action"]),
        format!(
            "{}/{}",
            text(&data["resource"]["type"]),
            text(&data["resource"]["id"])
        ),
        r.chain_index.to_string(),
    ]
}

const REJECTION_COLUMNS: [&str; 5] = ["rejectedAt", "source", "reason", "eventId", "detail"];

fn rejection_row(r: &RejectionView) -> Vec<String> {
    vec![
        r.rejected_at.clone(),
        r.source_id.clone(),
        r.reason.clone(),
        r.event_id.clone().unwrap_or_default(),
        r.detail.chars().take(80).collect(),
    ]
}

/// Items printed as they come (ndjson), or gathered and printed at the end (table, json).
struct Output {
    format: Format,
    columns: &'static [&'static str],
    rows: Vec<Vec<String>>,
    values: Vec<serde_json::Value>,
}

impl Output {
    fn new(format: Format, columns: &'static [&'static str]) -> Self {
        Self {
            format,
            columns,
            rows: Vec::new(),
            values: Vec::new(),
        }
    }

    fn item(&mut self, item: Item) -> anyhow::Result<()> {
        match self.format {
            Format::Ids => println!("{}", sanitize(&item.id)),
            Format::Ndjson => {
                let mut stdout = std::io::stdout().lock();
                serde_json::to_writer(&mut stdout, &item.value)?;
                stdout.write_all(b"\n")?;
            }
            Format::Json => self.values.push(item.value),
            Format::Table => self.rows.push(item.row),
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self.format {
            Format::Ndjson | Format::Ids => {}
            Format::Json => println!("{}", serde_json::to_string_pretty(&self.values)?),
            Format::Table => {
                let mut table = comfy_table::Table::new();
                table
                    .load_preset(comfy_table::presets::NOTHING)
                    .set_header(self.columns.iter().copied())
                    .add_rows(self.rows.iter().map(|r| r.iter().map(|c| sanitize(c))));
                println!("{table}");
            }
        }
        Ok(())
    }
}

/// A cell as it may reach a terminal: control characters (an escape sequence in an attribute
/// a producer wrote) shown as `�`, never interpreted.
fn sanitize(cell: &str) -> String {
    cell.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_from_producers_never_reach_the_terminal() {
        assert_eq!(sanitize("ok\u{1b}[2Jgone\n"), "ok\u{fffd}[2Jgone\u{fffd}");
    }

    #[test]
    fn only_the_filters_given_become_query_pairs_under_the_apis_names() {
        let f = RecordFilters {
            action: Some("DELETE".into()),
            resource_type: Some("Order".into()),
            ..RecordFilters::default()
        };
        assert_eq!(
            f.pairs(),
            vec![
                ("action", "DELETE".to_owned()),
                ("resourceType", "Order".to_owned())
            ]
        );
    }
}
