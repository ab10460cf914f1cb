//! The OpenAPI 3 document of the API (`/openapi.json`).

use axum::response::{IntoResponse, Json};
use serde_json::json;

fn op(summary: &str, control: bool) -> serde_json::Value {
    let mut o = json!({ "summary": summary, "responses": { "200": { "description": "OK" } } });
    if control {
        o["security"] = json!([{ "bearer": [] }]);
        o["responses"]["401"] =
            json!({ "description": "A token is configured and the request has none or another" });
    }
    o
}

pub async fn document() -> impl IntoResponse {
    let mut deploy = op(
        "Deploy a new version of a stage's plugin (body: the .wasm component)",
        true,
    );
    deploy["requestBody"] = json!({ "required": true, "content": { "application/wasm": { "schema": { "type": "string", "format": "binary" } } } });
    deploy["responses"]["400"] = json!({ "description": "An empty body" });
    deploy["responses"]["404"] =
        json!({ "description": "The pipeline has no such stage (the error names its stages)" });
    deploy["responses"]["413"] = json!({ "description": "The body is over api.max_upload_bytes" });
    deploy["responses"]["422"] = json!({ "description": "The component failed to load, its contract check or its self-test" });
    deploy["responses"]["503"] = json!({ "description": "The pipeline is stopping" });
    let stage = json!([{ "name": "stage", "in": "path", "required": true, "schema": { "type": "string" } }]);
    let mut gold = op(
        "Rows of a gold table for a window (per-wiki, per-page counts); other parameters filter columns by equality. `more` says whether rows beyond `limit` match; pages end where a window ends (rows of the window the limit would cut go to the next page, whose URL `next` gives with the same parameters), so following `next` gives every row once while the rows do not change between the requests; a window that alone holds more than `limit` rows is cut (its first rows, a `hint`, and a `next` that goes on after it)",
        false,
    );
    gold["parameters"] = json!([
        { "name": "table", "in": "path", "required": true, "schema": { "type": "string" } },
        { "name": "from", "in": "query", "schema": { "type": "string" }, "description": "window start at or after (ms or RFC 3339)" },
        { "name": "to", "in": "query", "schema": { "type": "string" }, "description": "window start before (ms or RFC 3339)" },
        { "name": "limit", "in": "query", "schema": { "type": "integer", "default": 1000, "minimum": 1, "maximum": 100000 } },
        { "name": "source", "in": "query", "schema": { "type": "string", "enum": ["auto", "memory", "lake"], "default": "auto" }, "description": "auto (default): every row of the windows from `from` on, newest first, from memory when it holds them all, else from the lake with memory's rows not committed yet (`source: memory+lake`); without `from`, the newest rows from memory. memory: memory alone, with `dropped: true` when it lacks rows of windows from `from` on. lake: committed rows of any window, oldest first" }
    ]);
    gold["responses"]["400"] = json!({ "description": "A `from`, `to`, `limit` or `source` that cannot be read, `from` not before `to`, a filter on a column the table lacks, or a parameter given twice" });
    gold["responses"]["404"] = json!({ "description": "No stage of this pipeline emits the table (the error names the ones that do); a table that is emitted but has no rows yet answers 200 with no rows and a `note` on when they come" });
    gold["responses"]["422"] = json!({ "description": "The lake read took over 20 s with hours still to read and fewer than `limit` rows found (a filter matching few rows over a long range): narrow `from` and `to`" });
    gold["responses"]["503"] = json!({ "description": "`source=lake` and the lake cannot be read, or the pipeline is still starting (no stage has published the tables it emits yet): ask again in a moment" });
    let mut latest = op("The newest silver events", false);
    latest["parameters"] = json!([{ "name": "limit", "in": "query", "schema": { "type": "integer", "maximum": 1000 } }]);
    latest["responses"]["400"] = json!({ "description": "A `limit` that is not a whole number or over 1000 (memory keeps the newest 1000 events), a parameter other than `limit`, or `limit` given twice" });
    let mut replay = op(
        "Replay the stream from a sequence or time into a new table version (<lake>/_versions/<version>)",
        true,
    );
    replay["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": {
        "type": "object", "required": ["version"],
        "properties": {
            "version": { "type": "string" }, "from_seq": { "type": "integer" },
            "from_time": { "oneOf": [{ "type": "string" }, { "type": "integer" }], "description": "RFC 3339, or ms since the epoch" }, "to_seq": { "type": "integer" },
            "from_bronze": { "type": "boolean", "description": "read the bronze table, not the stream" },
            "in_place": { "type": "boolean", "description": "then put the version in place of the live rows of the range" }
        } } } } });
    replay["responses"] = json!({
        "202": { "description": "Started" },
        "400": { "description": "A body that cannot be read, or a replay that cannot run (the error says why: a bad version name, both from_seq and from_time, to_seq before the start, an unreadable from_time or one outside 1970-9999)" },
        "404": { "description": "Replays are not offered by this host" },
        "409": { "description": "That version is running already" }
    });
    let mut deploy_path = json!({ "post": deploy });
    deploy_path["parameters"] = stage.clone();
    let mut rollback = op("Return a stage to its previous version", true);
    rollback["responses"]["404"] =
        json!({ "description": "The pipeline has no such stage (the error names its stages)" });
    rollback["responses"]["409"] =
        json!({ "description": "The stage has no version to return to" });
    rollback["responses"]["503"] = json!({ "description": "The pipeline is stopping" });
    let mut rollback_path = json!({ "post": rollback });
    rollback_path["parameters"] = stage;
    Json(json!({
        "openapi": "3.0.3",
        "info": { "title": "Weir", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Sandboxed WebAssembly plugins over live event streams" },
        "components": { "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } } },
        "paths": {
            "/health": { "get": op("The process is alive", false) },
            "/ready": { "get": op("NATS, the store and the plugins are up (503 otherwise)", false) },
            "/metrics": { "get": op("Prometheus metrics", false) },
            "/api/v1/pipeline": { "get": op("Pipeline counters, swap pauses, and the source this process ingests (`source`: connected or not, and what ended the last connection that failed, with its time `at_ms` and the next try's `next_try_ms`, both ms since the epoch, `next_try_ms` null when the ingest stopped for good; null without an ingest)", false) },
            "/api/v1/plugins": { "get": op("This host's plugins with their versions and stats, and what each host of the pipeline runs (`hosts`)", false) },
            "/api/v1/plugins/{stage}": deploy_path,
            "/api/v1/plugins/{stage}/rollback": rollback_path,
            "/api/v1/pipeline/pause": { "post": op("Stop taking new events on every host of the pipeline, and on hosts that start later, until resumed (the batch pulled is held, its acks kept alive). 200: every host; 202: this host now, the others once NATS takes the word; 503: this host only (it could not open the pipeline's record of pauses at start)", true) },
            "/api/v1/pipeline/resume": { "post": op("Take events again, on every host of the pipeline (200, 202, 503 as for pause)", true) },
            "/api/v1/events/latest": { "get": latest },
            "/api/v1/gold/{table}": { "get": gold },
            "/api/v1/quarantine/reasons": { "get": op("Quarantine reasons with counts", false) },
            "/api/v1/pipeline/replay": { "post": replay },
            "/api/v1/pipeline/replays": { "get": op("Replays started here, with their state and log", false) }
        }
    }))
}
