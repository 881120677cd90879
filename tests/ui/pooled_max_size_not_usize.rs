use cachify::pooled;

#[pooled("export-{tenant}", max_size = "3")]
async fn export(tenant: u64) -> Result<u64, cachify::Error> {
    Ok(tenant)
}

fn main() {}
