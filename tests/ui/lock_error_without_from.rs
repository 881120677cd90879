use cachify::lock;

#[derive(Debug)]
pub struct AppError;

#[lock("report-{id}")]
fn build_report(id: u64) -> Result<String, AppError> {
    Ok(id.to_string())
}

fn main() {}
