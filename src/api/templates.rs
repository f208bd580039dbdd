//! A tenant's templates, as the cluster shares them (the template store, asked through the
//! node's TemplateCache): per exporter, transport and Observation Domain, each field with its
//! Information Element's name.

use super::problem::{self, Problem};
use super::routes::Ctx;
use crate::actors::template_cache::{CacheMsg, TEMPLATE_CACHE, TenantTemplates};
use crate::store::{StoredTemplate, TemplateKey, Transport};
use crate::wire::TemplateKind;
use crate::wire::registry::Registry;
use std::net::IpAddr;
use warp::{Filter, Rejection, Reply};

/// `GET /api/v1/tenants/{tenant}/templates`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TemplateList {
    pub tenant: String,
    pub exporters: Vec<ExporterTemplates>,
    /// More templates exist than one answer lists (`TENANT_TEMPLATES`).
    pub truncated: bool,
}

/// One exporter over one transport: for UDP, one source port (RFC 7011 section 10.3: each UDP
/// Transport Session has templates of its own), for TCP port 0.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ExporterTemplates {
    #[schema(value_type = String)]
    pub exporter: IpAddr,
    pub transport: Transport,
    pub port: u16,
    pub domains: Vec<DomainTemplates>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DomainTemplates {
    pub domain: u32,
    pub templates: Vec<TemplateView>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TemplateView {
    pub id: u16,
    /// `data` or `options`.
    #[schema(value_type = String)]
    pub kind: &'static str,
    /// Options Templates: how many leading fields are scope fields.
    pub scope_fields: u16,
    pub fields: Vec<FieldView>,
    /// Unix seconds when a node of the cluster first learned it.
    pub first_seen: u64,
    /// The node that learned it.
    pub node: String,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct FieldView {
    /// The Information Element's name (made up as `_ipfix_<id>` or `e<pen>id<id>` when unknown).
    pub name: String,
    pub id: u16,
    /// Private Enterprise Number; 0 for IANA's elements.
    pub pen: u32,
    /// Bytes on the wire; 65535 is variable length.
    pub length: u16,
}

pub fn routes(
    ctx: Ctx,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "tenants" / String / "templates")
        .and(warp::get())
        .and(super::tenants::authorized(ctx))
        .and_then(list)
}

async fn list(tenant: String, ctx: Ctx) -> Result<warp::reply::Response, Rejection> {
    let Some(cache) = super::routes::local::<CacheMsg>(TEMPLATE_CACHE) else {
        return Err(problem::reject(Problem::unavailable(
            "the template cache is restarting".into(),
        )));
    };
    let ms = ctx.timeout.as_millis() as u64;
    let listed: TenantTemplates = match ractor::call_t!(cache, CacheMsg::Tenant, ms, tenant.clone())
    {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            return Err(problem::reject(Problem::unavailable(format!(
                "the template store: {e}"
            ))));
        }
        Err(e) => {
            return Err(problem::reject(Problem::unavailable(format!(
                "asking the template cache: {e}"
            ))));
        }
    };
    let view = group(tenant, listed, &ctx.registry);
    Ok(warp::reply::json(&view).into_response())
}

/// Groups the store's sorted (by scope, then id) templates by exporter and domain.
fn group(tenant: String, listed: TenantTemplates, registry: &Registry) -> TemplateList {
    let mut exporters: Vec<ExporterTemplates> = Vec::new();
    for (key, stored) in listed.templates {
        let same_exporter = exporters.last().is_some_and(|e| {
            e.exporter == key.exporter && e.transport == key.transport && e.port == key.port
        });
        if !same_exporter {
            exporters.push(ExporterTemplates {
                exporter: key.exporter,
                transport: key.transport,
                port: key.port,
                domains: Vec::new(),
            });
        }
        let Some(exporter) = exporters.last_mut() else {
            continue;
        };
        if exporter
            .domains
            .last()
            .is_none_or(|d| d.domain != key.domain)
        {
            exporter.domains.push(DomainTemplates {
                domain: key.domain,
                templates: Vec::new(),
            });
        }
        if let Some(domain) = exporter.domains.last_mut() {
            domain.templates.push(view(&key, stored, registry));
        }
    }
    TemplateList {
        tenant,
        exporters,
        truncated: listed.truncated,
    }
}

fn view(key: &TemplateKey, stored: StoredTemplate, registry: &Registry) -> TemplateView {
    let t = stored.template;
    TemplateView {
        id: key.template_id,
        kind: match t.kind {
            TemplateKind::Data => "data",
            TemplateKind::Options => "options",
        },
        scope_fields: t.scope_field_count,
        fields: t
            .fields
            .iter()
            .map(|f| FieldView {
                name: registry.resolve(f.pen, f.id).name.to_string(),
                id: f.id,
                pen: f.pen,
                length: f.length,
            })
            .collect(),
        first_seen: stored.first_seen,
        node: stored.node,
    }
}
