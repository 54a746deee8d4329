package config

import (
	"reflect"
	"sort"
	"strings"
)

// litellmOnly lists, per config block, keys that are real LiteLLM settings herd does not use.
// Each one present is a warning naming it, never an Info line: a setting herd accepts but
// ignores must not look as if it took effect. (The config still loads.)
var litellmOnly = map[reflect.Type][]string{
	reflect.TypeFor[Config](): {
		"guardrails", "mcp_servers", "files_settings", "assistant_settings", "finetune_settings",
		"vector_store_registry", "search_tools", "prompts", "callback_settings",
	},
	reflect.TypeFor[LiteLLMParams](): {
		// default request parameters
		"temperature", "max_tokens", "max_completion_tokens", "top_p", "stop", "n", "seed",
		"frequency_penalty", "presence_penalty", "response_format", "tools", "tool_choice",
		"stream", "user", "logit_bias", "reasoning_effort", "drop_params", "additional_drop_params",
		"num_retries", "merge_reasoning_content_in_choices", "cache_control_injection_points",
		// provider settings herd does not read
		"aws_external_id", "aws_sts_endpoint", "region_name", "watsonx_region_name", "api_type",
		// cost, budgets and bookkeeping
		"input_cost_per_token", "output_cost_per_token", "input_cost_per_second",
		"output_cost_per_second", "input_cost_per_pixel", "output_cost_per_pixel",
		"max_budget", "budget_duration", "tags", "base_model", "use_in_pass_through",
		"use_litellm_proxy", "configurable_clientside_auth_params", "litellm_trace_id",
		"model_info", "metadata",
	},
	reflect.TypeFor[RouterSettings](): {
		"cache_responses", "caching_groups", "client_ttl", "polling_interval",
		"optional_pre_call_checks", "retry_policy", "allowed_fails_policy",
		"model_group_retry_policy", "content_policy_fallbacks", "default_litellm_params",
		"set_verbose", "debug_level", "provider_budget_config", "router_general_settings",
		"alerting_config", "assistants_config", "default_max_parallel_requests",
		"default_priority", "enable_tag_filtering", "tag_filtering_match_any",
		"ignore_invalid_deployments", "cache_kwargs", "model_group_affinity",
		"deployment_affinity_ttl_seconds",
	},
	reflect.TypeFor[LiteLLMSettings](): {
		"success_callback", "failure_callback", "callbacks", "service_callback",
		"turn_off_message_logging", "redact_user_api_key_info", "redact_messages_in_exceptions",
		"max_budget", "budget_duration", "telemetry", "modify_params", "enable_preview_features",
		"default_team_settings", "upperbound_key_generate_params", "default_key_generate_params",
		"max_end_user_budget", "key_generation_settings", "disable_end_user_cost_tracking",
		"enable_json_schema_validation", "callback_settings", "langfuse_default_tags",
		"default_internal_user_params", "force_ipv4", "content_policy_fallbacks", "mcp_aliases",
		"return_response_headers", "default_redis_batch_cache_expiry",
		"guardrails", "public_model_groups", "check_provider_endpoint", "disable_token_counter",
		"enable_caching_on_provider_specific_optional_params", "max_internal_user_budget",
		"internal_user_budget_duration", "disable_add_prefix_to_prompt", "log_raw_request_response",
	},
	reflect.TypeFor[CacheParams](): {
		"namespace", "supported_call_types", "mode", "s3_bucket_name", "s3_region_name",
		"s3_api_version", "s3_endpoint_url", "s3_aws_access_key_id", "s3_aws_secret_access_key",
		"similarity_threshold", "redis_semantic_cache_embedding_model", "qdrant_collection_name",
		"qdrant_api_base", "qdrant_api_key", "qdrant_quantization_config",
		"default_in_memory_ttl", "default_in_redis_ttl", "max_connections", "disk_cache_dir",
	},
	reflect.TypeFor[GeneralSettings](): {
		"database_url", "store_model_in_db", "store_prompts_in_spend_logs", "alerting",
		"alerting_threshold", "alert_types", "alert_to_webhook_url", "alerting_args",
		"database_connection_pool_limit", "database_connection_timeout", "database_args",
		"disable_spend_logs", "disable_master_key_return", "disable_reset_budget",
		"disable_retry_on_max_parallel_request_limit_error", "disable_adding_master_key_hash_to_db",
		"enable_jwt_auth", "litellm_jwtauth", "proxy_batch_write_at",
		"proxy_budget_rescheduler_min_time", "proxy_budget_rescheduler_max_time",
		"allowed_routes", "admin_only_routes", "public_routes", "custom_auth",
		"custom_key_generate", "background_health_checks", "health_check_interval",
		"health_check_details", "enforce_user_param", "infer_model_from_keys",
		"ui_access_mode", "pass_through_endpoints", "enable_oauth2_auth", "use_redis_transaction_buffer",
		"disable_prisma_schema_update", "key_management_system", "key_management_settings",
		"user_header_name", "forward_client_headers_to_llm_api",
		"maximum_spend_logs_retention_period", "service_account_settings", "otel",
		"spend_report_frequency", "allow_requests_on_db_unavailable", "supported_db_objects",
		"enable_public_model_hub", "use_client_credentials_pass_through_routes",
		"disable_add_transform_inline_image_block",
	},
}

// litellmUnsupported lists LiteLLM settings herd reads differently or elsewhere: a warning
// with a hint saying what to do instead.
var litellmUnsupported = map[reflect.Type]map[string]string{
	reflect.TypeFor[Config](): {
		"include":         "herd does not read included files; copy their model_list into this file",
		"credential_list": "herd does not read credential_list; set litellm_params.api_key",
	},
	reflect.TypeFor[LiteLLMParams](): {
		"custom_llm_provider":     "herd takes the provider from the model prefix (azure/..., openai/...)",
		"litellm_credential_name": "herd does not read credential_list; set litellm_params.api_key",
		"azure_ad_token":          "herd authenticates to Azure with api_key only",
		"azure_ad_token_provider": "herd authenticates to Azure with api_key only",
		"tenant_id":               "herd authenticates to Azure with api_key only",
		"client_id":               "herd authenticates to Azure with api_key only",
		"client_secret":           "herd authenticates to Azure with api_key only",
		"azure_username":          "herd authenticates to Azure with api_key only",
		"azure_password":          "herd authenticates to Azure with api_key only",
		"headers":                 "herd sends litellm_params.extra_headers",
		"vertex_ai_project":       "herd reads LiteLLM's other name for it, vertex_project",
		"vertex_ai_location":      "herd reads LiteLLM's other name for it, vertex_location",
		"vertex_ai_credentials":   "herd reads LiteLLM's other name for it, vertex_credentials",
	},
	reflect.TypeFor[LiteLLMSettings](): {
		"fallbacks":                "herd reads fallbacks under router_settings",
		"context_window_fallbacks": "herd reads context_window_fallbacks under router_settings",
		"default_fallbacks":        "herd reads default_fallbacks under router_settings",
		"allowed_fails":            "herd reads allowed_fails under router_settings",
		"cooldown_time":            "herd reads cooldown_time under router_settings",
	},
}

// suggest returns the known key closest to an unknown one, or "" when none is close enough to
// be a plausible typo. Case, '-' and '_' differences count as exact matches.
func suggest(key string, known []string) string {
	norm := func(s string) string { return strings.ReplaceAll(strings.ToLower(s), "-", "_") }
	k := norm(key)
	limit := 1 + len(k)/4
	if limit > 3 {
		limit = 3
	}
	best, bestDist := "", limit+1
	for _, c := range known {
		if d := editDistance(k, norm(c)); d < bestDist || (d == bestDist && c < best) {
			best, bestDist = c, d
		}
	}
	if bestDist > limit {
		return ""
	}
	return best
}

// editDistance is the optimal string alignment distance: Levenshtein plus adjacent
// transpositions, so "rmp" is one edit from "rpm".
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	// Unknown keys are short; bound the work for fuzzed input.
	if len(ra) > 64 || len(rb) > 64 {
		if a == b {
			return 0
		}
		return 64
	}
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}

// knownKeys are the keys a block accepts or recognises, for suggestions.
func knownKeys(t reflect.Type, fields map[string]int) []string {
	keys := make([]string, 0, len(fields)+len(litellmOnly[t])+len(litellmUnsupported[t]))
	for k := range fields {
		keys = append(keys, k)
	}
	keys = append(keys, litellmOnly[t]...)
	for k := range litellmUnsupported[t] {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func isLiteLLMOnly(t reflect.Type, key string) bool {
	for _, k := range litellmOnly[t] {
		if k == key {
			return true
		}
	}
	return false
}
