//! Plain, column-aligned tables (no borders) for the human-readable outputs; JSON is the
//! stable machine format.

use comfy_table::{CellAlignment, ContentArrangement, Table, presets::NOTHING};

use super::out::outln;

/// A borderless table; columns listed in `right` are right-aligned (numbers).
pub struct Plain {
    table: Table,
    right: Vec<usize>,
}

impl Plain {
    pub fn new(header: &[&str], right: &[usize]) -> Plain {
        let mut table = Table::new();
        table
            .load_style(NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(header.iter().copied());
        Plain {
            table,
            right: right.to_vec(),
        }
    }

    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        self.table
            .add_row(cells.into_iter().map(|c| c.to_string()).collect::<Vec<_>>());
    }

    /// Prints the table with one space of padding right of each column, none on the left.
    pub fn print(mut self) {
        for i in &self.right {
            if let Some(c) = self.table.column_mut(*i) {
                c.set_cell_alignment(CellAlignment::Right);
            }
        }
        for c in self.table.column_iter_mut() {
            c.set_padding((0, 1));
        }
        for line in self.table.lines() {
            outln!("{}", line.trim_end());
        }
    }
}
