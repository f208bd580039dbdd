//! One Redis connection with the store's rules: a timeout on every command, and a second try
//! when the connection had dropped (the connection manager reconnects on the command after a
//! broken one). Used by the template store and the job store.

use super::StoreError;
use redis::aio::ConnectionManager;
use std::time::Duration;

pub struct RedisConn {
    conn: ConnectionManager,
    timeout: Duration,
    /// For subscriptions, which need a connection of their own.
    client: redis::Client,
    /// `db.client.operation.duration` (OpenTelemetry's database semantic conventions).
    duration: opentelemetry::metrics::Histogram<f64>,
}

fn operation_duration() -> opentelemetry::metrics::Histogram<f64> {
    opentelemetry::global::meter("ipfixsvc")
        .f64_histogram("db.client.operation.duration")
        .with_unit("s")
        .with_description(
            "Redis operations, by db.operation.name (what the store did) and error.type on failure",
        )
        .with_boundaries(vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
        ])
        .build()
}

impl RedisConn {
    /// Connects lazily: a node starts while Redis is down and reconnects with backoff.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisConn, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Config(format!("redis.url {url}: {e}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_max_delay(Duration::from_secs(5));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| StoreError::Config(format!("redis.url {url}: {e}")))?;
        Ok(RedisConn {
            conn,
            timeout,
            client,
            duration: operation_duration(),
        })
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    async fn attempt<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StoreError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let started = std::time::Instant::now();
        let result = self.try_twice(what, op).await;
        let mut attrs = vec![
            opentelemetry::KeyValue::new("db.system.name", "redis"),
            opentelemetry::KeyValue::new("db.operation.name", what.to_string()),
        ];
        if result.is_err() {
            attrs.push(opentelemetry::KeyValue::new("error.type", "unavailable"));
        }
        self.duration
            .record(started.elapsed().as_secs_f64(), &attrs);
        result
    }

    async fn try_twice<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let mut last = String::new();
        for _ in 0..2 {
            match tokio::time::timeout(self.timeout, op(self.conn.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e))
                    if e.is_connection_dropped()
                        || e.is_io_error()
                        || e.is_connection_refusal() =>
                {
                    last = e.to_string()
                }
                Ok(Err(e)) => return Err(StoreError::Unavailable(format!("{what}: {e}"))),
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "{what}: no answer within {:?}",
                        self.timeout
                    )));
                }
            }
        }
        Err(StoreError::Unavailable(format!("{what}: {last}")))
    }

    pub async fn query<T: redis::FromRedisValue>(
        &self,
        what: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        self.attempt(
            what,
            |mut c| async move { cmd.query_async::<T>(&mut c).await },
        )
        .await
    }

    /// A Lua script (atomic in Redis), loaded on first use.
    pub async fn eval<T: redis::FromRedisValue>(
        &self,
        what: &str,
        script: &redis::Script,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Result<T, StoreError> {
        self.attempt(what, |mut c| {
            let mut call = script.prepare_invoke();
            for k in keys {
                call.key(k);
            }
            for a in args {
                call.arg(a.as_slice());
            }
            async move { call.invoke_async::<T>(&mut c).await }
        })
        .await
    }

    /// A pipeline's answers, as one value (a tuple, a vector).
    pub async fn query_pipe_as<T: redis::FromRedisValue>(
        &self,
        what: &str,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        self.attempt(
            what,
            |mut c| async move { pipe.query_async::<T>(&mut c).await },
        )
        .await
    }

    /// An atomic pipeline whose answers are ignored.
    pub async fn query_pipe(&self, what: &str, pipe: &redis::Pipeline) -> Result<(), StoreError> {
        self.attempt(
            what,
            |mut c| async move { pipe.query_async::<()>(&mut c).await },
        )
        .await
    }
}
