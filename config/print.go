package config

import (
	"fmt"
	"io"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Print writes the effective configuration as YAML with secrets redacted
// (the database passwords, and kafka.sasl.password, a Secret), each
// setting that an environment variable overrides marked with that variable
// and what it holds (from Bindings).
func (c Config) Print(w io.Writer) error {
	c.Postgres.URL = RedactURL(c.Postgres.URL)
	var doc yaml.Node
	if err := doc.Encode(c); err != nil {
		return fmt.Errorf("printing the configuration: %w", err)
	}
	markEnv(&doc, "", envComments())
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return fmt.Errorf("printing the configuration: %w", err)
	}
	return enc.Close()
}

// envComments are the comments of the settings that have variables:
// "env MDS_COORDINATOR_FLUSH_INTERVAL (seconds)", by setting.
func envComments() map[string]string {
	vars := map[string][]string{}
	for _, b := range Bindings {
		switch f := b.Format(); {
		case b.Env == "":
		case b.Doc != "" || f == "text":
			vars[b.Setting] = append(vars[b.Setting], b.Env)
		default:
			vars[b.Setting] = append(vars[b.Setting], fmt.Sprintf("%s (%s)", b.Env, f))
		}
	}
	out := map[string]string{}
	for s, v := range vars {
		out[s] = "env " + strings.Join(v, ", ")
	}
	return out
}

// markEnv puts the comment of each setting (by its path) after its key.
func markEnv(n *yaml.Node, path string, comments map[string]string) {
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			markEnv(c, path, comments)
		}
		return
	}
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		p := k.Value
		if path != "" {
			p = path + "." + k.Value
		}
		k.LineComment = comments[p]
		markEnv(v, p, comments)
	}
}
