// psa-check evaluates every pod template in the given manifests against a Pod Security Standard
// level with the Kubernetes project's own policy library (k8s.io/pod-security-admission/policy),
// the code the API server's PodSecurity admission runs. A pod template is any object with a
// "spec" holding a "containers" list, so Jobs, JobSets, PyTorchJobs, Trainer runtimes and bare
// Pods are all found without knowing their kinds.
//
// Usage: psa-check [-level restricted] [-versions latest,v1.29] FILE... ("-" reads stdin)
// Exit status: 0 all pods allowed, 1 a pod violates the level, 2 bad input or no pod found.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

type podTemplate struct {
	where string
	body  map[string]any
}

func main() {
	level := flag.String("level", "restricted", "Pod Security Standard level: baseline or restricted")
	versions := flag.String("versions", "latest", "comma-separated policy versions, e.g. latest,v1.29")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "psa-check: name the manifest files to check (- for stdin)")
		os.Exit(2)
	}
	lvl, err := api.ParseLevel(*level)
	if err != nil {
		fail(err)
	}
	var lvs []api.LevelVersion
	for _, v := range strings.Split(*versions, ",") {
		ver, err := api.ParseVersion(strings.TrimSpace(v))
		if err != nil {
			fail(err)
		}
		lvs = append(lvs, api.LevelVersion{Level: lvl, Version: ver})
	}
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		fail(err)
	}

	pods, violations := 0, 0
	for _, file := range flag.Args() {
		templates, err := readTemplates(file)
		if err != nil {
			fail(fmt.Errorf("%s: %w", file, err))
		}
		for _, t := range templates {
			pods++
			meta, spec, err := decode(t.body)
			if err != nil {
				fail(fmt.Errorf("%s: %w", t.where, err))
			}
			for _, lv := range lvs {
				result := policy.AggregateCheckResults(evaluator.EvaluatePod(lv, meta, spec))
				if result.Allowed {
					fmt.Printf("ok   %s: %s %s\n", t.where, lv.Level, lv.Version)
				} else {
					violations++
					fmt.Printf("FAIL %s: %s %s: %s\n", t.where, lv.Level, lv.Version, result.ForbiddenDetail())
				}
			}
		}
	}
	fmt.Printf("psa-check: %d pod templates, %d violations of %s\n", pods, violations, lvl)
	if pods == 0 {
		fmt.Fprintln(os.Stderr, "psa-check: no pod template found: nothing was checked")
		os.Exit(2)
	}
	if violations > 0 {
		os.Exit(1)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "psa-check:", err)
	os.Exit(2)
}

func readTemplates(file string) ([]podTemplate, error) {
	var in io.Reader = os.Stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		in = f
	}
	reader := yaml.NewYAMLReader(bufio.NewReader(in))
	var out []podTemplate
	for {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(raw)) == 0 {
			continue
		}
		var doc map[string]any
		if err := yaml.Unmarshal(raw, &doc); err != nil {
			return nil, err
		}
		if doc == nil {
			continue
		}
		name := fmt.Sprintf("%s %v/%v", file, doc["kind"], nested(doc, "metadata", "name"))
		if doc["kind"] == "Pod" {
			out = append(out, podTemplate{name, doc})
			continue
		}
		walk(doc, name, &out)
	}
}

// walk collects every map whose "spec" has a "containers" list: a PodTemplateSpec wherever a
// workload kind nests it.
func walk(node any, where string, out *[]podTemplate) {
	switch n := node.(type) {
	case map[string]any:
		if spec, ok := n["spec"].(map[string]any); ok {
			if _, ok := spec["containers"].([]any); ok {
				*out = append(*out, podTemplate{where, n})
				return
			}
		}
		keys := make([]string, 0, len(n))
		for k := range n {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			walk(n[k], where+"."+k, out)
		}
	case []any:
		for i, v := range n {
			walk(v, fmt.Sprintf("%s[%d]", where, i), out)
		}
	}
}

// decode turns the template into the typed API objects; an unknown field is an error, so a
// misspelt securityContext field cannot pass as "not set".
func decode(body map[string]any) (*metav1.ObjectMeta, *corev1.PodSpec, error) {
	raw, err := json.Marshal(body)
	if err != nil {
		return nil, nil, err
	}
	var tpl corev1.PodTemplateSpec
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&struct {
		APIVersion string `json:"apiVersion,omitempty"`
		Kind       string `json:"kind,omitempty"`
		*corev1.PodTemplateSpec
	}{PodTemplateSpec: &tpl}); err != nil {
		return nil, nil, fmt.Errorf("not a pod template: %w", err)
	}
	return &tpl.ObjectMeta, &tpl.Spec, nil
}

func nested(m map[string]any, keys ...string) any {
	var cur any = m
	for _, k := range keys {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = mm[k]
	}
	return cur
}
