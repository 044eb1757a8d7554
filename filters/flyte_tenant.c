/*
 * flyte_tenant: ties Flyte projects to teams.
 *
 * For every request it
 *  1. reads the verified team claim from the property
 *     jwt.claims.<claim> (path segments "jwt", "claims", <claim>); without
 *     one the request gets a local 403 (gRPC: PERMISSION_DENIED, 7);
 *  2. sets the request header <header> (gRPC metadata) to that team,
 *     replacing whatever the client sent;
 *  3. finds the Flyte project: the request header <projectHeader> (gRPC
 *     metadata such as `project`), else the path segment right after one of
 *     <pathPrefixes> (REST: /api/v1/executions/<project>/...);
 *  4. rejects with a local 403 (gRPC: 7) a project that is not listed for
 *     the team in <teams> ("*" allows any). A request naming no project
 *     passes, unless <requireProject> is true.
 *
 * Configuration (every key but "teams" optional):
 *   {"claim": "team", "header": "x-tollgate-team", "projectHeader": "project",
 *    "pathPrefixes": ["/api/v1/executions/", "/api/v1/projects/"],
 *    "requireProject": false,
 *    "teams": {"ml": ["ml-research", "ml-prod"], "platform": ["*"]}}
 */
#include "proxy_wasm.h"

static pw_str claim_path; /* "jwt\0claims\0<claim>" */
static pw_str team_header = {"x-tollgate-team", 15};
static pw_str project_header = {"project", 7};
static pw_str *prefixes;
static size_t n_prefixes;
static bool require_project;
static pw_json teams; /* kept with its text */

static const char *default_prefixes[] = {
    "/api/v1/projects/",     "/api/v1/executions/", "/api/v1/tasks/",
    "/api/v1/workflows/",    "/api/v1/launch_plans/", "/api/v1/active_launch_plans/",
    "/api/v1/node_executions/", "/api/v1/task_executions/", "/api/v1/data_proxy/",
};

static bool string_member(pw_json doc, const char *key, pw_str *out) {
  pw_json v = pw_json_get(doc, key);
  if (v.kind == PW_JSON_ERROR) return true;
  return pw_json_string(v, out);
}

PW_EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root, size_t size) {
  (void)root;
  pw_str config;
  if (size == 0 || !pw_get_buffer(PW_PLUGIN_CONFIGURATION, &config)) {
    pw_log(PW_ERROR, "flyte_tenant: a configuration with \"teams\" is required");
    return 0;
  }
  pw_json doc = pw_json_parse(config.ptr, config.len, 0);
  if (doc.kind != PW_JSON_OBJECT) {
    pw_log(PW_ERROR, "flyte_tenant: the configuration must be a JSON object");
    return 0;
  }
  pw_str claim = {"team", 4};
  if (!string_member(doc, "claim", &claim) || !string_member(doc, "header", &team_header) ||
      !string_member(doc, "projectHeader", &project_header)) {
    pw_log(PW_ERROR, "flyte_tenant: claim, header and projectHeader must be strings");
    return 0;
  }
  char *path = pw_malloc(11 + claim.len);
  if (!path) return 0;
  memcpy(path, "jwt\0claims\0", 11);
  memcpy(path + 11, claim.ptr, claim.len);
  claim_path = (pw_str){path, 11 + claim.len};

  pw_json list = pw_json_get(doc, "pathPrefixes");
  if (list.kind == PW_JSON_ARRAY) {
    pw_json v;
    size_t pos = 0, n = 0;
    while (pw_json_next_element(list, &pos, &v)) n++;
    prefixes = pw_malloc(sizeof(pw_str) * (n + 1));
    pos = 0;
    while (prefixes && pw_json_next_element(list, &pos, &v))
      if (pw_json_string(v, &prefixes[n_prefixes])) n_prefixes++;
  } else if (list.kind == PW_JSON_ERROR) {
    size_t n = sizeof(default_prefixes) / sizeof(default_prefixes[0]);
    prefixes = pw_malloc(sizeof(pw_str) * n);
    for (size_t i = 0; prefixes && i < n; i++) prefixes[n_prefixes++] = pw_cstr(default_prefixes[i]);
  } else {
    pw_log(PW_ERROR, "flyte_tenant: pathPrefixes must be a list of strings");
    return 0;
  }
  require_project = pw_json_get(doc, "requireProject").kind == PW_JSON_TRUE;
  teams = pw_json_get(doc, "teams");
  if (teams.kind != PW_JSON_OBJECT) {
    pw_log(PW_ERROR, "flyte_tenant: \"teams\" must map team names to lists of projects");
    return 0;
  }
  return 1; /* config text stays: teams points into it */
}

static uint32_t deny(const char *details, const char *what, pw_str a, pw_str b) {
  pw_buf body = {0};
  pw_buf_push(&body, what, strlen(what));
  pw_buf_push(&body, a.ptr, a.len);
  if (b.len) {
    pw_buf_push(&body, " does not belong to team ", 25);
    pw_buf_push(&body, b.ptr, b.len);
  }
  pw_buf_push(&body, "\n", 1);
  /* 7 = PERMISSION_DENIED for gRPC requests */
  pw_send_response(403, details, (pw_str){body.ptr, body.len}, 7);
  pw_buf_free(&body);
  return PW_PAUSE;
}

static bool project_from_path(pw_str path, pw_str *out) {
  size_t end = 0;
  while (end < path.len && path.ptr[end] != '?') end++;
  for (size_t i = 0; i < n_prefixes; i++) {
    pw_str p = prefixes[i];
    if (p.len <= end && memcmp(path.ptr, p.ptr, p.len) == 0) {
      size_t s = p.len, e = p.len;
      while (e < end && path.ptr[e] != '/') e++;
      if (e > s) {
        *out = (pw_str){path.ptr + s, e - s};
        return true;
      }
    }
  }
  return false;
}

static bool team_has(pw_str team, pw_str project) {
  pw_json k, v;
  size_t pos = 0;
  while (pw_json_next_member(teams, &pos, &k, &v)) {
    pw_str name;
    if (!pw_json_string(k, &name)) continue;
    bool match = pw_str_eq(name, team);
    pw_free((void *)name.ptr);
    if (!match) continue;
    pw_json p;
    size_t ppos = 0;
    while (pw_json_next_element(v, &ppos, &p)) {
      pw_str s;
      if (!pw_json_string(p, &s)) continue;
      bool ok = pw_str_eq(s, project) || (s.len == 1 && s.ptr[0] == '*');
      pw_free((void *)s.ptr);
      if (ok) return true;
    }
  }
  return false;
}

PW_EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, size_t n, uint32_t end_of_stream) {
  (void)ctx, (void)n, (void)end_of_stream;
  pw_str team;
  pw_str none = {"", 0};
  if (!pw_get_property(claim_path.ptr, claim_path.len, &team) || team.len == 0)
    return deny("flyte_tenant_no_team", "no verified team claim", none, none);
  pw_replace_header(PW_HTTP_REQUEST_HEADERS, team_header, team);

  pw_str project = {0, 0}, header_value = {0, 0}, path = {0, 0};
  bool found = false;
  if (pw_get_header(PW_HTTP_REQUEST_HEADERS, project_header, &header_value) &&
      header_value.len > 0) {
    project = header_value;
    found = true;
  } else if (pw_get_header(PW_HTTP_REQUEST_HEADERS, pw_cstr(":path"), &path)) {
    found = project_from_path(path, &project);
  }
  uint32_t action = PW_CONTINUE;
  if (!found) {
    if (require_project) action = deny("flyte_tenant_no_project", "no Flyte project in request", none, none);
  } else if (!team_has(team, project)) {
    action = deny("flyte_tenant_project_denied", "project ", project, team);
  }
  pw_free((void *)header_value.ptr);
  pw_free((void *)path.ptr);
  pw_free((void *)team.ptr);
  return action;
}
