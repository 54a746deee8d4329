// Package fakeupstream is a fake OpenAI / Azure OpenAI upstream for herd's tests, benchmarks
// and chaos runs: deterministic answers, exact usage, and faults injected per deployment.
//
// # Endpoints
//
// OpenAI: POST /v1/chat/completions, /v1/completions, /v1/embeddings (also without /v1) and
// GET /v1/models (or /models), which lists the deployments seen so far. Azure: POST
// /openai/deployments/{deployment}/chat/completions|completions|embeddings, which needs an
// api-version query parameter. Anything else is a 404 with an OpenAI-shaped error body:
//
//	{"error":{"message":"...","type":"...","param":null,"code":"<status>"}}
//
// Providers' own formats ("dialects", dialect.go) are served beside OpenAI's, with the same
// counting, faults, latency and usage formula, and answers and errors in each provider's shape:
// Anthropic: POST /v1/messages (deployment: the body's "model"; x-api-key checked against
// APIKey; anthropic-version and max_tokens required; N includes the system prompt's text).
// OpenAI's Responses API: POST /v1/responses, and Azure's /openai/responses?api-version=
// (deployment: the body's "model"; N is the text of instructions and input; the usage is in
// the response object, and in a stream's response.completed event).
// Gemini API: POST /v1beta/models/{model}:generateContent, :streamGenerateContent?alt=sse and
// :batchEmbedContents, also under /v1/ (deployment: the model from the path; the key in
// x-goog-api-key or ?key=, checked against APIKey: none is a 403, a wrong one a 400, as Google
// answers them; N counts the text parts of contents and systemInstruction and the "content" of
// functionResponse responses; embeddings report no usage). Vertex AI: the same methods, and
// :predict for embeddings (token_count per input, summing to prompt_tokens), under
// /v1/projects/{p}/locations/{l}/publishers/google/models/{model}, and Anthropic's body at
// .../publishers/anthropic/models/{model}:rawPredict and :streamRawPredict (anthropic_version
// vertex-2023-10-16 required); every Vertex call needs a bearer token, equal to APIKey when set.
// Google's errors are {"error":{"code":...,"message":...,"status":"RESOURCE_EXHAUSTED"}}
// (rawPredict's 400s are Anthropic's). Streams send the usage on every event, the prompt alone
// until the last, which has finishReason STOP and no text.
// Bedrock: POST /model/{modelId}/converse and /converse-stream, the stream in AWS's binary
// event-stream encoding, and /model/{modelId}/invoke for Titan and Cohere embeddings; for
// Anthropic model IDs (containing "anthropic.claude") /invoke and /invoke-with-response-stream
// take Anthropic's Messages body (anthropic_version bedrock-2023-05-31; no model, no stream)
// and answer Anthropic's JSON, or its stream events base64 in event-stream "chunk" events
// (deployment: the model ID, unescaped from the path; SigV4 signatures by BedrockAccessKeyID
// verified, or a bearer API key checked against APIKey; N includes the system blocks' and tool
// results' text; Cohere's embeddings report no usage; errors are {"message"} with
// x-amzn-ErrorType).
//
// # Deployment key
//
// Counters, faults and LastRequest are keyed by deployment: the body's "model" for OpenAI paths,
// the {deployment} path segment for Azure paths. Requests whose deployment cannot be read (bad
// JSON, no model) are counted under ""; unknown paths, wrong methods and GET /v1/models are not
// counted.
//
// # Answers and usage
//
// Chat and completions answer with the content "Hello from <deployment>." (repeated,
// space-separated, until it has at least StreamChunks runes). Usage is exact and the same whether
// the request streams or not:
//
//	N                 = bytes of the request's text, after JSON unescaping:
//	                    chat: every message's string content, or the "text" of each content part;
//	                    completions: "prompt"; embeddings: "input" (strings summed, 4 bytes per token ID)
//	prompt_tokens     = max(1, N/4)        (integer division)
//	completion_tokens = StreamChunks       (default 5; chat and completions)
//	total_tokens      = prompt_tokens + completion_tokens   (embeddings: prompt_tokens)
//
// For example, chat with messages "You are terse." and "Say hi" has N = 14+6 = 20, so the usage is
// 5 prompt + 5 completion = 10 total tokens. Embeddings return one 8-float vector per input, derived
// from a hash of the input (base64 when encoding_format is "base64").
//
// A stream ("stream": true) sends a role chunk (chat only), StreamChunks content chunks that
// concatenate to the non-streamed content, a chunk with finish_reason "stop", and then, when
// stream_options.include_usage is true, a chunk with "choices":[] and the usage (every earlier chunk
// then carries "usage":null), and finally "data: [DONE]". ChunkDelay is waited before each content
// chunk and before the finish chunk.
//
// # Order of handling
//
// route → read body → count → Fault.Hang → validation (api-version, API key, JSON, model) →
// wait Latency + Jitter + Fault.Delay → Fault.Status or FailRate → answer (Fault.StreamCut,
// Fault.NoUsage). Validation errors are answered at once, without the latency: a real upstream
// rejects a bad key before it reaches a model.
package fakeupstream
