use cachify::cached;

pub struct Report {
    pub id: u64,
}

#[cached("report-{id}")]
fn build_report(id: u64) -> Result<Report, cachify::Error> {
    Ok(Report { id })
}

fn main() {}
