//! `report`: retweets per retweeter (rows) and original author (columns).
//!
//! One SQL query does the work: it counts per (retweeter, author), ranks
//! retweeters and authors by their totals, folds everyone past the top K into
//! an "other" row or column, and adds the row, column and grand totals with
//! `GROUPING SETS`. The client only lays the cells out.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use comfy_table::{CellAlignment, ColumnConstraint, LineStyle, Table, TableStyle};
use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::cli::{ReportArgs, ReportFormat};
use crate::db::{Database, Purpose};
use crate::model::table;
use crate::ui;

/// Aligned columns and a rule under the header, like `ls -l` or `ps`: easy
/// to read, and to cut with standard tools.
const STYLE: TableStyle = TableStyle::new().header_separator(LineStyle::none().fill('─').junction('─'));

/// Rows and columns the terminal table shows unless `--limit` says otherwise.
pub const DEFAULT_TABLE_LIMIT: u32 = 10;

const QUERY: &str = "\
WITH counts AS (
    SELECT retweeter, original_author AS author, count(*) AS n
      FROM {table}
     GROUP BY retweeter, original_author
), top_retweeters AS (
    SELECT retweeter, row_number() OVER (ORDER BY sum(n) DESC, retweeter) AS rank
      FROM counts GROUP BY retweeter ORDER BY rank LIMIT $1
), top_authors AS (
    SELECT author, row_number() OVER (ORDER BY sum(n) DESC, author) AS rank
      FROM counts GROUP BY author ORDER BY rank LIMIT $1
)
SELECT tr.rank, tr.retweeter, ta.rank, ta.author,
       GROUPING(tr.rank, ta.rank)::int AS grouped,
       coalesce(sum(c.n), 0)::bigint, count(DISTINCT c.retweeter), count(DISTINCT c.author)
  FROM counts AS c
  LEFT JOIN top_retweeters AS tr ON tr.retweeter = c.retweeter
  LEFT JOIN top_authors AS ta ON ta.author = c.author
 GROUP BY GROUPING SETS ((tr.rank, tr.retweeter, ta.rank, ta.author), (tr.rank, tr.retweeter), (ta.rank, ta.author), ())";

/// One line of the matrix: a retweeter, or the "other" retweeters, or the totals.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Line {
    /// Retweets per shown author, in column order.
    pub counts: Vec<i64>,
    /// Retweets of authors past the top K (when some are folded).
    pub other: i64,
    /// All retweets of this line.
    pub total: i64,
}

/// The retweeter × author table of counts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Matrix {
    /// The shown authors, most retweeted first.
    pub authors: Vec<i64>,
    /// Authors folded into the "other" column.
    pub other_authors: i64,
    /// The shown retweeters, most active first, with their line.
    pub rows: Vec<(i64, Line)>,
    /// Retweeters folded into the "other" row, and their line.
    pub other_retweeters: i64,
    /// The "other" row (empty when nobody is folded).
    pub other_row: Line,
    /// Column totals and the grand total.
    pub totals: Line,
    /// Distinct retweeters and authors in the whole table.
    pub retweeters: i64,
    /// Distinct authors in the whole table.
    pub all_authors: i64,
}

/// Runs the report query.
///
/// # Errors
/// Database errors (a missing table says to run `migrate`).
pub async fn matrix(client: &Client, limit: Option<u32>) -> anyhow::Result<Matrix> {
    let sql = QUERY.replace("{table}", &table());
    let limit = limit.map(i64::from);
    let rows = client.query(&sql, &[&limit]).await.map_err(|e| {
        let missing = e.code() == Some(&SqlState::UNDEFINED_TABLE);
        let err = anyhow::Error::new(e).context("the report query failed");
        if missing {
            err.context("the database has no retweet table yet: run `retweeter-app migrate` first")
        } else {
            err
        }
    })?;
    struct Cell {
        r_rank: Option<i64>,
        retweeter: Option<i64>,
        a_rank: Option<i64>,
        author: Option<i64>,
        grouped: i32,
        n: i64,
        retweeters: i64,
        authors: i64,
    }
    let cells = rows
        .iter()
        .map(|r| {
            Ok(Cell {
                r_rank: r.try_get(0)?,
                retweeter: r.try_get(1)?,
                a_rank: r.try_get(2)?,
                author: r.try_get(3)?,
                grouped: r.try_get(4)?,
                n: r.try_get(5)?,
                retweeters: r.try_get(6)?,
                authors: r.try_get(7)?,
            })
        })
        .collect::<Result<Vec<Cell>, tokio_postgres::Error>>()
        .context("unexpected result of the report query")?;

    let mut m = Matrix::default();
    // Column and row headers from the per-author and per-retweeter totals.
    let mut authors: Vec<(i64, i64)> =
        cells.iter().filter(|c| c.grouped == 2).filter_map(|c| Some((c.a_rank?, c.author?))).collect();
    authors.sort();
    m.authors = authors.iter().map(|(_, a)| *a).collect();
    let column: HashMap<i64, usize> = authors.iter().enumerate().map(|(i, (rank, _))| (*rank, i)).collect();
    let mut retweeters: Vec<(i64, i64)> =
        cells.iter().filter(|c| c.grouped == 1).filter_map(|c| Some((c.r_rank?, c.retweeter?))).collect();
    retweeters.sort();
    let row: HashMap<i64, usize> = retweeters.iter().enumerate().map(|(i, (rank, _))| (*rank, i)).collect();
    let width = m.authors.len();
    let empty = || Line { counts: vec![0; width], other: 0, total: 0 };
    m.rows = retweeters.iter().map(|(_, r)| (*r, empty())).collect();
    m.other_row = empty();
    m.totals = empty();

    for c in &cells {
        // GROUPING(rank_r, rank_a): bit 1 set = summed over retweeters, bit 0 = over authors.
        let line = match (c.grouped & 2 != 0, c.r_rank) {
            (true, _) => &mut m.totals,
            (false, Some(rank)) => &mut m.rows[row[&rank]].1,
            (false, None) => &mut m.other_row,
        };
        match (c.grouped & 1 != 0, c.a_rank) {
            (true, _) => line.total = c.n,
            (false, Some(rank)) => line.counts[column[&rank]] = c.n,
            (false, None) => line.other = c.n,
        }
        match c.grouped {
            3 => {
                m.retweeters = c.retweeters;
                m.all_authors = c.authors;
            }
            1 if c.r_rank.is_none() => m.other_retweeters = c.retweeters,
            2 if c.a_rank.is_none() => m.other_authors = c.authors,
            _ => {}
        }
    }
    Ok(m)
}

/// The terminal table.
pub fn render_table(m: &Matrix) -> String {
    if m.totals.total == 0 {
        return "no retweets stored yet\n".to_owned();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "retweets by retweeter (rows) and original author (columns): {}, {} of {}, {} of {}",
        ui::count(m.totals.total.unsigned_abs(), "retweet", "retweets"),
        m.rows.len(),
        ui::count(m.retweeters.unsigned_abs(), "retweeter", "retweeters"),
        m.authors.len(),
        ui::count(m.all_authors.unsigned_abs(), "author", "authors"),
    );
    let mut table = Table::new();
    table.load_style(STYLE);
    let mut header = vec!["retweeter \\ author".to_owned()];
    header.extend(m.authors.iter().map(i64::to_string));
    if m.other_authors > 0 {
        header.push(ui::count(m.other_authors.unsigned_abs(), "other", "others"));
    }
    header.push("total".to_owned());
    table.set_header(header);
    let line = |label: String, l: &Line| {
        let mut cells = vec![label];
        cells.extend(l.counts.iter().map(i64::to_string));
        if m.other_authors > 0 {
            cells.push(l.other.to_string());
        }
        cells.push(l.total.to_string());
        cells
    };
    for (retweeter, l) in &m.rows {
        table.add_row(line(retweeter.to_string(), l));
    }
    if m.other_retweeters > 0 {
        table.add_row(line(
            ui::count(m.other_retweeters.unsigned_abs(), "other retweeter", "other retweeters"),
            &m.other_row,
        ));
    }
    table.add_row(line("total".to_owned(), &m.totals));
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_constraint(ColumnConstraint::ContentWidth);
        if i > 0 {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    for line in table.lines() {
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// CSV: a header, one line per retweeter, then "other" and "total" lines.
pub fn render_csv(m: &Matrix) -> String {
    let mut out = String::from("retweeter");
    for a in &m.authors {
        let _ = write!(out, ",{a}");
    }
    let folded_authors = m.other_authors > 0;
    if folded_authors {
        out.push_str(",other");
    }
    out.push_str(",total\n");
    let mut line = |label: &str, l: &Line| {
        out.push_str(label);
        for n in &l.counts {
            let _ = write!(out, ",{n}");
        }
        if folded_authors {
            let _ = write!(out, ",{}", l.other);
        }
        let _ = writeln!(out, ",{}", l.total);
    };
    for (retweeter, l) in &m.rows {
        line(&retweeter.to_string(), l);
    }
    if m.other_retweeters > 0 {
        line("other", &m.other_row);
    }
    line("total", &m.totals);
    out
}

#[derive(Serialize)]
struct JsonReport<'a> {
    /// Shown authors, as strings (ids exceed 2^53).
    authors: Vec<String>,
    other_authors: i64,
    rows: Vec<JsonRow<'a>>,
    other_retweeters: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    other: Option<JsonLine<'a>>,
    totals: JsonLine<'a>,
    retweeters: i64,
    all_authors: i64,
}

#[derive(Serialize)]
struct JsonRow<'a> {
    retweeter: String,
    #[serde(flatten)]
    line: JsonLine<'a>,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    counts: &'a [i64],
    other: i64,
    total: i64,
}

impl<'a> From<&'a Line> for JsonLine<'a> {
    fn from(l: &'a Line) -> Self {
        JsonLine { counts: &l.counts, other: l.other, total: l.total }
    }
}

/// JSON: authors (column order), rows with counts aligned to them, the
/// "other" row when retweeters were folded, and totals. Ids are strings.
pub fn render_json(m: &Matrix) -> String {
    let report = JsonReport {
        authors: m.authors.iter().map(i64::to_string).collect(),
        other_authors: m.other_authors,
        rows: m.rows.iter().map(|(r, l)| JsonRow { retweeter: r.to_string(), line: l.into() }).collect(),
        other_retweeters: m.other_retweeters,
        other: (m.other_retweeters > 0).then(|| (&m.other_row).into()),
        totals: (&m.totals).into(),
        retweeters: m.retweeters,
        all_authors: m.all_authors,
    };
    let mut text = serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// Renders the report in `format`.
pub fn render(m: &Matrix, format: ReportFormat) -> String {
    match format {
        ReportFormat::Table => render_table(m),
        ReportFormat::Csv => render_csv(m),
        ReportFormat::Json => render_json(m),
    }
}

/// `report`.
pub async fn command(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    Database::run(&args.db, Purpose::Existing, async |db| {
        let client = db.connect().await?;
        let limit = match (args.format, args.limit) {
            (_, Some(k)) => Some(k),
            (ReportFormat::Table, None) => Some(DEFAULT_TABLE_LIMIT),
            _ => None,
        };
        let m = matrix(&client, limit).await.context("could not compute the report")?;
        let text = render(&m, args.format);
        ui::out(text.trim_end_matches('\n'));
        Ok(ExitCode::SUCCESS)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Matrix {
        Matrix {
            authors: vec![11, 22],
            other_authors: 1,
            rows: vec![
                (1_234_567_890_123_456_789, Line { counts: vec![5, 16], other: 1, total: 22 }),
                (7, Line { counts: vec![12, 0], other: 0, total: 12 }),
            ],
            other_retweeters: 2,
            other_row: Line { counts: vec![0, 1], other: 0, total: 1 },
            totals: Line { counts: vec![17, 17], other: 1, total: 35 },
            retweeters: 4,
            all_authors: 3,
        }
    }

    #[test]
    fn csv_layout() {
        assert_eq!(
            render_csv(&sample()),
            "retweeter,11,22,other,total\n1234567890123456789,5,16,1,22\n7,12,0,0,12\nother,0,1,0,1\ntotal,17,17,1,35\n"
        );
    }

    #[test]
    fn json_keeps_ids_exact() {
        let v: serde_json::Value = serde_json::from_str(&render_json(&sample())).unwrap();
        assert_eq!(v["rows"][0]["retweeter"], "1234567890123456789");
        assert_eq!(v["rows"][0]["counts"], serde_json::json!([5, 16]));
        assert_eq!(v["totals"]["total"], 35);
        assert_eq!(v["other"]["counts"], serde_json::json!([0, 1]));
    }

    #[test]
    fn table_layout() {
        let text = render_table(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("35 retweets"), "{text}");
        assert!(lines[1].contains("retweeter \\ author") && lines[1].contains("1 other "), "{text}");
        assert!(lines[2].chars().all(|c| c == '─' || c == ' '), "{text}");
        let cells: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(cells, ["1234567890123456789", "5", "16", "1", "22"]);
        assert!(lines.last().unwrap().trim_start().starts_with("total"));
        assert_eq!(render_table(&Matrix::default()), "no retweets stored yet\n");
    }
}
