// Command promop decodes each JSON document named on its command line strictly into
// prometheus-operator's own Go types (PrometheusRule, ServiceMonitor): an unknown or
// misspelt field, or a value of the wrong type, is an error. tests/test_helm.py feeds
// it the objects `helm template` renders from deploy/helm/tcpsleuth.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
)

func decode(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return "", err
	}
	if head.APIVersion != monitoringv1.SchemeGroupVersion.String() {
		return "", fmt.Errorf("apiVersion %q is not %s", head.APIVersion, monitoringv1.SchemeGroupVersion)
	}
	var target any
	switch head.Kind {
	case monitoringv1.PrometheusRuleKind:
		target = &monitoringv1.PrometheusRule{}
	case monitoringv1.ServiceMonitorsKind:
		target = &monitoringv1.ServiceMonitor{}
	default:
		return "", fmt.Errorf("kind %q is neither PrometheusRule nor ServiceMonitor", head.Kind)
	}
	decoder := json.NewDecoder(bytes.NewReader(data))
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(target); err != nil {
		return "", err
	}
	if decoder.More() {
		return "", fmt.Errorf("more than one document")
	}
	switch object := target.(type) {
	case *monitoringv1.PrometheusRule:
		rules := 0
		for _, group := range object.Spec.Groups {
			rules += len(group.Rules)
		}
		return fmt.Sprintf("%s %s groups=%d rules=%d", head.Kind, object.Name, len(object.Spec.Groups), rules), nil
	case *monitoringv1.ServiceMonitor:
		return fmt.Sprintf("%s %s endpoints=%d", head.Kind, object.Name, len(object.Spec.Endpoints)), nil
	}
	return "", nil
}

func main() {
	failed := false
	for _, path := range os.Args[1:] {
		summary, err := decode(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			failed = true
			continue
		}
		fmt.Println(summary)
	}
	if failed {
		os.Exit(1)
	}
}
