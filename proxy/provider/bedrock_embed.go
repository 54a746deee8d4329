package provider

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/tidwall/gjson"
)

// Embeddings on Bedrock go through InvokeModel (POST /model/{id}/invoke) in each model's own
// body: Amazon Titan's {"inputText"} (one text per call, no batch form) and Cohere's
// {"texts","input_type"}.

// bedrockEmbedKind is the embeddings format of model: "titan", "cohere", or "".
func bedrockEmbedKind(model string) string {
	switch {
	case strings.Contains(model, "amazon.titan-embed"):
		return "titan"
	case strings.Contains(model, "cohere.embed"):
		return "cohere"
	}
	return ""
}

// CohereDefaultInputType is the input_type sent to Cohere embedding models when the request
// names none (it is required; LiteLLM sends the same default).
const CohereDefaultInputType = "search_document"

func (b *bedrock) embedRequest(body []byte, model string) ([]byte, error) {
	kind := bedrockEmbedKind(model)
	if kind == "" {
		return nil, &BadRequest{Provider: "bedrock", Message: "herd translates embeddings for Amazon Titan (amazon.titan-embed-*) and Cohere (cohere.embed-*) models on bedrock, not " + quote(model) + "."}
	}
	// input_type is Cohere's own parameter, which LiteLLM passes on; the OpenAI decoding
	// does not know it.
	inputType := CohereDefaultInputType
	if it := gjson.GetBytes(body, "input_type"); it.Exists() {
		if kind != "cohere" && !b.drop {
			return nil, unsupported("bedrock", "input_type", "input_type for this model (Cohere's embeddings take it)")
		}
		if it.Str != "" {
			inputType = it.Str
		}
		var err error
		if body, err = withoutKey(body, "input_type"); err != nil {
			return nil, &BadRequest{Provider: "bedrock", Message: "The request body is not a valid embeddings request: " + err.Error()}
		}
	}
	er, err := decodeEmbeddings("bedrock", body, b.drop)
	if err != nil {
		return nil, err
	}
	if kind == "titan" {
		if len(er.inputs) > 1 {
			return nil, &BadRequest{Provider: "bedrock", Param: "input", Message: "Titan embedding models on bedrock embed one text per call: send input as a single string, or one request per text."}
		}
		req := struct {
			InputText  string `json:"inputText"`
			Dimensions *int64 `json:"dimensions,omitempty"`
		}{InputText: er.inputs[0]}
		if er.Dimensions != nil {
			if !strings.Contains(model, "titan-embed-text-v2") && !b.drop {
				return nil, unsupported("bedrock", "dimensions", "dimensions for this model (Titan Text Embeddings V2 takes 256, 512 or 1024)")
			}
			if strings.Contains(model, "titan-embed-text-v2") {
				req.Dimensions = er.Dimensions
			}
		}
		return json.Marshal(req)
	}
	req := struct {
		Texts           []string `json:"texts"`
		InputType       string   `json:"input_type"`
		OutputDimension *int64   `json:"output_dimension,omitempty"`
	}{Texts: er.inputs, InputType: inputType}
	if er.Dimensions != nil {
		switch {
		case strings.Contains(model, "cohere.embed-v4"):
			req.OutputDimension = er.Dimensions
		case !b.drop:
			return nil, unsupported("bedrock", "dimensions", "dimensions for this model (Cohere Embed v4 takes 256, 512, 1024 or 1536)")
		}
	}
	return json.Marshal(req)
}

// withoutKey is a JSON object without one top-level key.
func withoutKey(body []byte, key string) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, err
	}
	delete(m, key)
	return json.Marshal(m)
}

// bedrockEmbedResponse converts a Titan answer ("embedding") or a Cohere one ("embeddings"). Titan
// counts its input tokens; Cohere does not, so they are estimated from the texts it echoes.
func bedrockEmbedResponse(request, body []byte) ([]byte, error) {
	var r struct {
		Embedding           []float64       `json:"embedding"`           // Titan
		InputTextTokenCount int64           `json:"inputTextTokenCount"` // Titan
		Embeddings          json.RawMessage `json:"embeddings"`          // Cohere: [[...]], or {"float":[[...]]} with embedding_types
		Texts               []string        `json:"texts"`               // Cohere
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("bedrock answered with a body herd cannot read: %w", err)
	}
	if r.Embeddings == nil {
		return embeddingsJSON(request, [][]float64{r.Embedding}, r.InputTextTokenCount)
	}
	raw := r.Embeddings
	if gjson.ParseBytes(raw).IsObject() {
		raw = json.RawMessage(gjson.GetBytes(raw, "float").Raw)
	}
	var vectors [][]float64
	if err := json.Unmarshal(raw, &vectors); err != nil {
		return nil, fmt.Errorf("bedrock answered with embeddings herd cannot read: %w", err)
	}
	n := 0
	for _, t := range r.Texts {
		n += len(t)
	}
	return embeddingsJSON(request, vectors, EstimateTokens(n))
}
