//! `-o table|json|yaml`: one choice of output format for every command that prints objects, and
//! the table layout kubectl users read.

use serde::Serialize;
use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns for people
    Table,
    /// JSON, for scripts and jq
    Json,
    /// YAML, as kubectl prints objects
    Yaml,
}

/// The value as JSON (pretty, one trailing newline) or YAML; `None` for a table, which each
/// command lays out itself.
pub fn serialized(value: &impl Serialize, format: Format) -> anyhow::Result<Option<String>> {
    Ok(match format {
        Format::Table => None,
        Format::Json => Some(serde_json::to_string_pretty(value)? + "\n"),
        // Quoted where kubectl (YAML 1.1) would read a word as a boolean: `stitching: 'off'`.
        Format::Yaml => Some(mesh_config::yaml11::quote_booleans(&serde_yaml::to_string(
            value,
        )?)),
    })
}

/// Columns padded to their widest cell plus three spaces, as kubectl prints.
pub fn write_table<const N: usize>(
    out: &mut impl Write,
    rows: &[[String; N]],
) -> std::io::Result<()> {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}
