use cachify::pooled;

#[pooled("export-{tenant}", wait = 5)]
async fn export(tenant: u64) -> Result<u64, cachify::Error> {
    Ok(tenant)
}

fn main() {}
