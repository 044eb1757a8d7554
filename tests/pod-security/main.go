// Command psa-fixtures writes the pods that Pod Security Admission's own
// fixture generator (k8s.io/pod-security-admission/test, at the release in
// go.mod) says must pass and must fail, for every check, level and version:
//
//	<out>/<level>/v1.<minor>/<pass|fail>/<check><n>.json
//	<out>/index.json   one entry per pod: file, level, minor, check, expect, substring
//
// The generator is not exported (getFixtures in fixtures.go), so it is
// reached with go:linkname; the two types below mirror its unexported key
// and result field for field. PSA's own TestFixtures walks levels and
// versions the same way to write test/testdata.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	_ "unsafe" // go:linkname

	corev1 "k8s.io/api/core/v1"
	"k8s.io/component-base/featuregate"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	psatest "k8s.io/pod-security-admission/test"
)

// fixtureKey mirrors test.fixtureKey.
type fixtureKey struct {
	version api.Version
	level   api.Level
	check   policy.CheckID
}

// fixtureData mirrors test.fixtureData.
type fixtureData struct {
	expectErrorSubstring string
	failRequiresFeatures []featuregate.Feature
	failRequiresError    bool
	pass                 []*corev1.Pod
	fail                 []*corev1.Pod
}

//go:linkname getFixtures k8s.io/pod-security-admission/test.getFixtures
func getFixtures(key fixtureKey) (fixtureData, error)

type entry struct {
	File      string `json:"file"`
	Level     string `json:"level"`
	Minor     int    `json:"minor"`
	Check     string `json:"check"`
	Expect    string `json:"expect"`
	Substring string `json:"substring,omitempty"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: psa-fixtures <output directory>")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "psa-fixtures:", err)
		os.Exit(1)
	}
}

func run(out string) error {
	checks := policy.DefaultChecks()
	newest := 0
	for _, check := range checks {
		for _, v := range check.Versions {
			newest = max(newest, v.MinimumVersion.Minor())
		}
	}
	var index []entry
	write := func(level api.Level, minor int, check, expect, substring string, n int, pod *corev1.Pod) error {
		rel := filepath.Join(string(level), fmt.Sprintf("v1.%d", minor), expect, fmt.Sprintf("%s%d.json", strings.ToLower(check), n))
		pod = pod.DeepCopy()
		pod.APIVersion, pod.Kind = "v1", "Pod"
		pod.Name = fmt.Sprintf("%s-%s%d", expect, strings.ToLower(strings.ReplaceAll(check, "_", "-")), n)
		data, err := json.MarshalIndent(pod, "", "  ")
		if err != nil {
			return err
		}
		path := filepath.Join(out, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
			return err
		}
		index = append(index, entry{rel, string(level), minor, check, expect, substring})
		return nil
	}
	for _, level := range []api.Level{api.LevelBaseline, api.LevelRestricted} {
		for minor := 0; minor <= newest; minor++ {
			version := api.MajorMinorVersion(1, minor)
			bases := map[string]func(api.Level, api.Version) (*corev1.Pod, error){"base": psatest.GetMinimalValidPod}
			if level == api.LevelRestricted && minor >= 25 {
				bases["base_linux"] = psatest.GetMinimalValidLinuxPod
				bases["base_windows"] = psatest.GetMinimalValidWindowsPod
			}
			for name, get := range bases {
				pod, err := get(level, version)
				if err != nil {
					return err
				}
				if err := write(level, minor, name, "pass", "", 0, pod); err != nil {
					return err
				}
			}
			for _, check := range checks {
				applies := !version.Older(check.Versions[0].MinimumVersion) &&
					(check.Level == level || level == api.LevelRestricted)
				if !applies {
					continue
				}
				data, err := getFixtures(fixtureKey{version: version, level: level, check: check.ID})
				if err != nil {
					return err
				}
				for n, pod := range data.pass {
					if err := write(level, minor, string(check.ID), "pass", "", n, pod); err != nil {
						return err
					}
				}
				for n, pod := range data.fail {
					if err := write(level, minor, string(check.ID), "fail", data.expectErrorSubstring, n, pod); err != nil {
						return err
					}
				}
			}
		}
	}
	data, err := json.MarshalIndent(index, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, "index.json"), data, 0o644)
}
