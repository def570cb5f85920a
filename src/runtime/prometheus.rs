//! Host and container signals from Prometheus, through PromQL instant queries.
//!
//! In: a Prometheus base URL, a per-request timeout, and the PromQL of the `[prometheus]`
//! section (`config::PrometheusQueries`) with the watched mount points.
//! Out: [`PromSample`]s for one query, a [`HostSample`] for the host signals, and container
//! memory in percent by container name (cAdvisor).
//!
//! It must not decide anything (whether a value is a breach is `pipeline::detect`), must not
//! fall back to the local host itself (the caller does that when [`PrometheusClient::host_sample`]
//! fails), and must never panic on what Prometheus answers: HTTP errors, timeouts, malformed
//! JSON and Prometheus's own errors all become a [`PromError`].

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use crate::config::PrometheusQueries;
use crate::runtime::HostSample;

/// One series of an instant query's answer. A scalar answer is one sample without labels.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Why a query gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("invalid prometheus url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("the prometheus http client cannot be built")]
    Client(#[source] reqwest::Error),
    #[error("prometheus at {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("prometheus at {url} cannot be reached")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// A non-2xx answer that is not one of Prometheus's own error bodies (a proxy, say).
    #[error("prometheus answered http {status}: {body}")]
    Http { status: u16, body: String },
    /// Prometheus's `{"status":"error"}`: a bad query, a query timeout, …
    #[error("prometheus rejected the query `{query}`: {error_type}: {message}")]
    Query {
        query: String,
        error_type: String,
        message: String,
    },
    #[error("prometheus answered something that is not a query result: {0}")]
    Malformed(String),
    /// A query meant to answer one number answered several series.
    #[error("the query `{query}` answered {count} series where one number was expected")]
    Ambiguous { query: String, count: usize },
}

/// One container as cAdvisor reports it through Prometheus.
#[derive(Debug, Clone, PartialEq)]
pub struct CadvisorContainer {
    pub name: String,
    /// Working set in percent of the memory limit.
    pub memory_percent: f64,
    /// Docker labels with the keys as cAdvisor writes them: `container_label_` stripped and
    /// every character but letters, digits and `_` turned into `_` (`sentinel_ignore`).
    pub labels: BTreeMap<String, String>,
}

impl CadvisorContainer {
    /// The label Docker calls `key` (`sentinel.ignore`), looked up under cAdvisor's name for
    /// it (`sentinel_ignore`).
    pub fn label(&self, key: &str) -> Option<&str> {
        let sanitized: String = key
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        self.labels.get(&sanitized).map(String::as_str)
    }
}

impl PromError {
    /// The reason in a few words for the status page and `/sentinel status`; the full error
    /// goes to the log.
    pub fn for_people(&self) -> String {
        match self {
            PromError::InvalidUrl { .. } => "the Prometheus URL is not valid".to_owned(),
            PromError::Client(_) => "the HTTP client cannot be built".to_owned(),
            PromError::Timeout { timeout, .. } => format!(
                "Prometheus did not answer within {}",
                humantime::format_duration(*timeout)
            ),
            PromError::Unreachable { source, .. } => {
                if source.is_connect() {
                    "Prometheus: connection refused".to_owned()
                } else {
                    "Prometheus cannot be reached".to_owned()
                }
            }
            PromError::Http { status, .. } => format!("Prometheus answered HTTP {status}"),
            PromError::Query { error_type, .. } => {
                format!("Prometheus rejected the query ({error_type})")
            }
            PromError::Malformed(_) => "Prometheus answered something unexpected".to_owned(),
            PromError::Ambiguous { count, .. } => {
                format!("the query answered {count} series where one number was expected")
            }
        }
    }
}

/// A Prometheus HTTP API client for instant queries.
#[derive(Debug, Clone)]
pub struct PrometheusClient {
    http: reqwest::Client,
    /// `<base>/api/v1/query`, built once from the base URL.
    query_url: Url,
    /// Kept to name it in [`PromError::Timeout`].
    timeout: Duration,
}

impl PrometheusClient {
    /// A client for the Prometheus at `base_url` (`http://host:9090`, or with a path prefix
    /// such as `http://proxy/prometheus`); every request, connection included, gives up after
    /// `timeout`.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, PromError> {
        let invalid = |reason: String| PromError::InvalidUrl {
            url: base_url.to_owned(),
            reason,
        };
        let base = Url::parse(base_url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https".to_owned()));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid(
                "a query string or fragment is not allowed".to_owned(),
            ));
        }
        let query_url = Url::parse(&format!(
            "{}/api/v1/query",
            base.as_str().trim_end_matches('/')
        ))
        .map_err(|e| invalid(e.to_string()))?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(PromError::Client)?;
        Ok(Self {
            http,
            query_url,
            timeout,
        })
    }

    /// Runs `promql` as an instant query (`GET /api/v1/query`) and returns its series.
    /// Samples whose value is NaN or infinite are left out.
    pub async fn instant_query(&self, promql: &str) -> Result<Vec<PromSample>, PromError> {
        let response = self
            .http
            .get(self.query_url.clone())
            .query(&[("query", promql)])
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        interpret_response(promql, status, &body)
    }

    /// The host signals, all queries at once.
    ///
    /// The memory query decides whether Prometheus answered: when it fails, so does the whole
    /// call, and the caller reads the local host instead. Any other query that fails is logged
    /// and its field is `None`; a query with no series (a rate before two scrapes, a mount
    /// node-exporter does not report) gives `None`, or no entry in `disks`.
    pub async fn host_sample(
        &self,
        queries: &PrometheusQueries,
        mounts: &[String],
    ) -> Result<HostSample, PromError> {
        let disks = futures::future::join_all(mounts.iter().map(|mount| async move {
            let query = disk_query(&queries.disk, mount);
            (mount, self.single_value(&query).await)
        }));
        let latency = async {
            if queries.network_latency.trim().is_empty() {
                return None;
            }
            Some(match self.single_value(&queries.network_latency).await {
                Ok(Some(ms)) => Ok(ms),
                Ok(None) => Err("the [prometheus] network_latency query has no data".to_owned()),
                Err(error) => {
                    tracing::warn!(signal = "network_latency", error = %error, "prometheus query failed");
                    Err(format!(
                        "the [prometheus] network_latency query failed: {}",
                        error.for_people()
                    ))
                }
            })
        };
        let (cpu, memory, network_bytes, network_errors, latency, disks) = tokio::join!(
            self.single_value(&queries.host_cpu),
            self.single_value(&queries.host_memory),
            self.single_value(&queries.network_bytes),
            self.single_value(&queries.network_errors),
            latency,
            disks,
        );
        let memory_percent = memory?;
        let mut sample = HostSample {
            cpu_percent: or_log("host_cpu", cpu),
            memory_percent,
            disks: BTreeMap::new(),
            network_mb_per_s: or_log("network_bytes", network_bytes).map(|bytes| bytes / 1e6),
            network_errors_per_s: or_log("network_errors", network_errors),
            network_latency_ms: latency,
        };
        for (mount, result) in disks {
            if let Some(percent) = or_log("disk", result) {
                sample.disks.insert(mount.clone(), percent);
            }
        }
        Ok(sample)
    }

    /// Container memory in percent of its limit, by the `name` label (cAdvisor). Series
    /// without a `name` are left out; no such series at all gives an empty map.
    pub async fn container_memory(&self, query: &str) -> Result<BTreeMap<String, f64>, PromError> {
        Ok(self
            .cadvisor_containers(query)
            .await?
            .into_iter()
            .map(|container| (container.name, container.memory_percent))
            .collect())
    }

    /// Container memory from cAdvisor with each container's Docker labels, as far as the
    /// series carry them (`container_label_<key>`), sorted by name, one per name (the
    /// highest when several series share a name).
    pub async fn cadvisor_containers(
        &self,
        query: &str,
    ) -> Result<Vec<CadvisorContainer>, PromError> {
        let mut by_name: BTreeMap<String, CadvisorContainer> = BTreeMap::new();
        for sample in self.instant_query(query).await? {
            let Some(name) = sample.labels.get("name").filter(|n| !n.is_empty()) else {
                continue;
            };
            let container = CadvisorContainer {
                name: name.clone(),
                memory_percent: sample.value,
                labels: sample
                    .labels
                    .iter()
                    .filter_map(|(key, value)| {
                        Some((
                            key.strip_prefix("container_label_")?.to_owned(),
                            value.clone(),
                        ))
                    })
                    .collect(),
            };
            match by_name.get(name) {
                Some(seen) if seen.memory_percent >= container.memory_percent => {}
                _ => {
                    by_name.insert(name.clone(), container);
                }
            }
        }
        Ok(by_name.into_values().collect())
    }

    /// A query that answers one number: `None` for no series, an error for several.
    async fn single_value(&self, query: &str) -> Result<Option<f64>, PromError> {
        let samples = self.instant_query(query).await?;
        match samples.as_slice() {
            [] => Ok(None),
            [only] => Ok(Some(only.value)),
            _ => Err(PromError::Ambiguous {
                query: query.to_owned(),
                count: samples.len(),
            }),
        }
    }

    fn transport_error(&self, error: reqwest::Error) -> PromError {
        let url = self.query_url.to_string();
        if error.is_timeout() {
            PromError::Timeout {
                url,
                timeout: self.timeout,
            }
        } else {
            PromError::Unreachable { url, source: error }
        }
    }
}

/// A field's value, or `None` after logging why the query failed.
fn or_log(signal: &str, result: Result<Option<f64>, PromError>) -> Option<f64> {
    result.unwrap_or_else(|error| {
        tracing::warn!(signal, error = %error, "prometheus query failed");
        None
    })
}

/// The `disk` query for one mount point: `$mount` replaced by the mount point escaped for a
/// double-quoted PromQL string (`"` `\` and line breaks), so that a strange mount point
/// yields no series rather than a broken query. `$mount` must sit inside double quotes.
pub fn disk_query(template: &str, mount: &str) -> String {
    let mut escaped = String::with_capacity(mount.len());
    for c in mount.chars() {
        match c {
            '\\' => escaped.push_str(r"\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str(r"\n"),
            '\r' => escaped.push_str(r"\r"),
            '\t' => escaped.push_str(r"\t"),
            c => escaped.push(c),
        }
    }
    template.replace("$mount", &escaped)
}

/// Prometheus's answer envelope: `{"status": "success"|"error", "data": …, "error": …}`.
#[derive(Deserialize)]
struct Envelope {
    status: String,
    data: Option<QueryData>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct QueryData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

/// One series of a `vector` result. Native histograms carry `histogram` instead of `value`
/// and are skipped.
#[derive(Deserialize)]
struct VectorSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: Option<(f64, String)>,
}

/// Turns an HTTP status and body into samples or the error they describe.
fn interpret_response(query: &str, status: u16, body: &[u8]) -> Result<Vec<PromSample>, PromError> {
    let success = (200..300).contains(&status);
    let envelope = match serde_json::from_slice::<Envelope>(body) {
        Ok(envelope) => envelope,
        Err(_) if !success => {
            return Err(PromError::Http {
                status,
                body: snippet(body),
            })
        }
        Err(e) => return Err(PromError::Malformed(e.to_string())),
    };
    match envelope.status.as_str() {
        "error" => Err(PromError::Query {
            query: query.to_owned(),
            error_type: envelope.error_type.unwrap_or_default(),
            message: envelope.error.unwrap_or_default(),
        }),
        "success" if success => {
            let data = envelope
                .data
                .ok_or_else(|| PromError::Malformed("no data".to_owned()))?;
            parse_result(&data.result_type, data.result)
        }
        _ if !success => Err(PromError::Http {
            status,
            body: snippet(body),
        }),
        other => Err(PromError::Malformed(format!("status {other:?}"))),
    }
}

fn parse_result(
    result_type: &str,
    result: serde_json::Value,
) -> Result<Vec<PromSample>, PromError> {
    let malformed = |e: serde_json::Error| PromError::Malformed(format!("{result_type}: {e}"));
    let mut samples = Vec::new();
    match result_type {
        "vector" => {
            let series: Vec<VectorSeries> = serde_json::from_value(result).map_err(malformed)?;
            for one in series {
                let Some((_, value)) = one.value else {
                    continue;
                };
                if let Some(value) = parse_value(&value)? {
                    samples.push(PromSample {
                        labels: one.metric,
                        value,
                    });
                }
            }
        }
        "scalar" => {
            let (_, value): (f64, String) = serde_json::from_value(result).map_err(malformed)?;
            if let Some(value) = parse_value(&value)? {
                samples.push(PromSample {
                    labels: BTreeMap::new(),
                    value,
                });
            }
        }
        other => {
            return Err(PromError::Malformed(format!(
                "result type {other:?} where a vector or a scalar was expected"
            )))
        }
    }
    Ok(samples)
}

/// A sample value as Prometheus writes it (`"0.5"`, `"NaN"`, `"+Inf"`); `None` when it is
/// not a finite number.
fn parse_value(text: &str) -> Result<Option<f64>, PromError> {
    let value: f64 = text
        .parse()
        .map_err(|_| PromError::Malformed(format!("sample value {text:?}")))?;
    Ok(value.is_finite().then_some(value))
}

/// The start of a body, for an error message.
fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Vec<PromSample> {
        interpret_response("q", 200, body.as_bytes()).expect("samples")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_vector_answer_gives_one_sample_per_series() {
        let samples = ok(
            r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"name":"web-1","job":"cadvisor"},"value":[1700000000.123,"42.5"]},
            {"metric":{"name":"db"},"value":[1700000000.123,"7"]}]}}"#,
        );
        assert_eq!(
            samples,
            vec![
                PromSample {
                    labels: labels(&[("job", "cadvisor"), ("name", "web-1")]),
                    value: 42.5
                },
                PromSample {
                    labels: labels(&[("name", "db")]),
                    value: 7.0
                },
            ]
        );
    }

    #[test]
    fn an_empty_vector_gives_no_samples() {
        assert!(
            ok(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#).is_empty()
        );
    }

    #[test]
    fn a_scalar_answer_gives_one_sample_without_labels() {
        let samples = ok(
            r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"3.25"]}}"#,
        );
        assert_eq!(
            samples,
            vec![PromSample {
                labels: BTreeMap::new(),
                value: 3.25
            }]
        );
    }

    #[test]
    fn nan_and_infinite_values_are_skipped() {
        let samples = ok(
            r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"a":"1"},"value":[1,"NaN"]},
            {"metric":{"a":"2"},"value":[1,"+Inf"]},
            {"metric":{"a":"3"},"value":[1,"-Inf"]},
            {"metric":{"a":"4"},"value":[1,"1e3"]}]}}"#,
        );
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].value, 1000.0);
        assert!(
            ok(r#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#)
                .is_empty()
        );
    }

    #[test]
    fn native_histogram_series_are_skipped() {
        let samples = ok(
            r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{},"histogram":[1,{"count":"3","sum":"2","buckets":[]}]}]}}"#,
        );
        assert!(samples.is_empty());
    }

    #[test]
    fn prometheus_errors_carry_its_message() {
        let body = r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unexpected end of input"}"#;
        let error = interpret_response("sum(", 400, body.as_bytes()).unwrap_err();
        match &error {
            PromError::Query {
                query,
                error_type,
                message,
            } => {
                assert_eq!(query, "sum(");
                assert_eq!(error_type, "bad_data");
                assert!(message.contains("unexpected end of input"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(error.to_string().contains("parse error"), "{error}");
    }

    #[test]
    fn http_errors_without_prometheus_json_name_the_status() {
        let error = interpret_response("up", 502, b"<html>Bad Gateway</html>").unwrap_err();
        assert!(
            matches!(error, PromError::Http { status: 502, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("Bad Gateway"), "{error}");
        let long = "x".repeat(10_000);
        let error = interpret_response("up", 500, long.as_bytes()).unwrap_err();
        assert!(error.to_string().len() < 400, "the body is cut");
    }

    #[test]
    fn malformed_answers_are_errors() {
        for body in [
            "",
            "not json",
            "{}",
            r#"{"status":"success"}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":{}}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"abc"]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1]}]}}"#,
            r#"{"status":"success","data":{"resultType":"scalar","result":"3"}}"#,
            r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
            r#"{"status":"success","data":{"resultType":"string","result":[1,"a"]}}"#,
            r#"{"status":"weird","data":{"resultType":"vector","result":[]}}"#,
        ] {
            let error = interpret_response("q", 200, body.as_bytes()).unwrap_err();
            assert!(
                matches!(error, PromError::Malformed(_)),
                "{body}: {error:?}"
            );
        }
    }

    #[test]
    fn cadvisor_labels_are_found_by_their_docker_key() {
        let container = CadvisorContainer {
            name: "web-1".into(),
            memory_percent: 10.0,
            labels: labels(&[("sentinel_ignore", "true"), ("com_example_team", "db")]),
        };
        assert_eq!(container.label("sentinel.ignore"), Some("true"));
        assert_eq!(container.label("com.example-team"), Some("db"));
        assert_eq!(container.label("sentinel.protected"), None);
    }

    #[test]
    fn disk_query_escapes_the_mount_for_a_promql_string() {
        let template = r#"node_filesystem_avail_bytes{mountpoint="$mount"} / node_filesystem_size_bytes{mountpoint="$mount"}"#;
        assert_eq!(
            disk_query(template, "/var/lib/docker"),
            r#"node_filesystem_avail_bytes{mountpoint="/var/lib/docker"} / node_filesystem_size_bytes{mountpoint="/var/lib/docker"}"#
        );
        assert_eq!(
            disk_query(r#"{mountpoint="$mount"}"#, r#"/we"ird\dir"#),
            r#"{mountpoint="/we\"ird\\dir"}"#
        );
        assert_eq!(disk_query(r#""$mount""#, "/a\nb"), r#""/a\nb""#);
    }

    #[test]
    fn base_urls_are_checked() {
        let timeout = Duration::from_secs(1);
        for good in [
            "http://127.0.0.1:9090",
            "http://127.0.0.1:9090/",
            "https://p/prom/",
        ] {
            let client = PrometheusClient::new(good, timeout).expect(good);
            assert!(
                client.query_url.as_str().ends_with("/api/v1/query"),
                "{good}"
            );
            assert!(!client.query_url.as_str().contains("//api"), "{good}");
        }
        assert_eq!(
            PrometheusClient::new("https://p/prom/", timeout)
                .unwrap()
                .query_url
                .as_str(),
            "https://p/prom/api/v1/query"
        );
        for bad in [
            "",
            "localhost:9090",
            "ftp://host",
            "http://h/?a=b",
            "not a url",
        ] {
            assert!(
                matches!(
                    PrometheusClient::new(bad, timeout),
                    Err(PromError::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
    }
}
