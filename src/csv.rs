//! The one CSV writer of the service: RFC 4180 lines (CRLF, fields quoted
//! when they must be), with every cell made safe to open in a spreadsheet.
//!
//! Report cells hold what visitors typed into public links (`utm_term`,
//! campaign names), so a cell such as `=HYPERLINK("https://evil.example")`
//! would otherwise be a live formula in the partner's spreadsheet. As
//! OWASP's CSV-injection guidance says, a cell that starts with `=`, `+`,
//! `-`, `@`, a tab or a carriage return gets a leading `'`, which
//! spreadsheets read as "this is text", and is quoted. A plain decimal
//! number (`-12.50`, a clawback) is left as it is: it cannot be a formula,
//! and a quote would turn the figure into text.

/// A CSV document, written a line at a time.
#[derive(Debug, Default)]
pub struct CsvWriter {
    out: String,
}

impl CsvWriter {
    pub fn new() -> CsvWriter {
        CsvWriter::default()
    }

    /// Appends one line of `fields`.
    pub fn line<S: AsRef<str>>(&mut self, fields: impl IntoIterator<Item = S>) {
        for (i, field) in fields.into_iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.push_field(field.as_ref());
        }
        self.out.push_str("\r\n");
    }

    /// The document.
    pub fn finish(self) -> String {
        self.out
    }

    fn push_field(&mut self, field: &str) {
        let formula = is_formula_like(field);
        if formula || field.contains([',', '"', '\r', '\n']) {
            self.out.push('"');
            if formula {
                self.out.push('\'');
            }
            self.out.push_str(&field.replace('"', "\"\""));
            self.out.push('"');
        } else {
            self.out.push_str(field);
        }
    }
}

/// Whether a spreadsheet could read `field` as a formula: it starts with
/// one of OWASP's trigger characters and is not a plain decimal number.
fn is_formula_like(field: &str) -> bool {
    field.starts_with(['=', '+', '-', '@', '\t', '\r']) && !is_plain_number(field)
}

/// `-?digits[.digits]`.
fn is_plain_number(field: &str) -> bool {
    let digits = field.strip_prefix('-').unwrap_or(field);
    let mut parts = digits.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let fraction = parts.next();
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    all_digits(whole) && fraction.is_none_or(all_digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(fields: &[&str]) -> String {
        let mut csv = CsvWriter::new();
        csv.line(fields);
        csv.finish()
    }

    #[test]
    fn fields_are_quoted_as_rfc_4180_asks() {
        assert_eq!(line(&["a", "b c", "1.50"]), "a,b c,1.50\r\n");
        assert_eq!(
            line(&["a,b", "say \"hi\""]),
            "\"a,b\",\"say \"\"hi\"\"\"\r\n"
        );
        assert_eq!(line(&["two\nlines"]), "\"two\nlines\"\r\n");
        assert_eq!(line(&[""]), "\r\n");
    }

    #[test]
    fn a_cell_a_spreadsheet_would_run_is_made_text() {
        assert_eq!(
            line(&["=HYPERLINK(\"https://evil.example/\",\"click\")"]),
            "\"'=HYPERLINK(\"\"https://evil.example/\"\",\"\"click\"\")\"\r\n"
        );
        for (cell, safe) in [
            ("+cmd|'/C calc'!A0", "\"'+cmd|'/C calc'!A0\""),
            ("@SUM(1+1)", "\"'@SUM(1+1)\""),
            ("-2+3", "\"'-2+3\""),
            ("\tx", "\"'\tx\""),
            ("\rx", "\"'\rx\""),
            ("-", "\"'-\""),
            ("-1.", "\"'-1.\""),
        ] {
            assert_eq!(line(&[cell]), format!("{safe}\r\n"), "{cell:?}");
        }
    }

    #[test]
    fn numbers_stay_numbers() {
        assert_eq!(line(&["-12.50", "-3", "0.00", "7"]), "-12.50,-3,0.00,7\r\n");
        assert_eq!(line(&["a=b", "x-y"]), "a=b,x-y\r\n");
    }
}
