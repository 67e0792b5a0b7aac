//! `atp openapi`: the HTTP API's OpenAPI document, as served at /api/v1/openapi.json.

pub(super) fn run() -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&atp_gateway::openapi())?);
    Ok(())
}
