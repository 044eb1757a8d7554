"""Backports reflect2 v1.0.2's Go 1.18 fix into Kubernetes 1.20's vendored
reflect2 v1.0.1. Built with Go >= 1.18, v1.0.1 calls reflect.mapiterinit
with the old signature and kube-apiserver segfaults the first time
json-iterator encodes a map (for example the audit annotation of every
mutating webhook's patch). Usage: fix.py <vendor/github.com/modern-go/reflect2>
"""
import pathlib
import re
import shutil
import sys

here = pathlib.Path(__file__).parent
vendor = pathlib.Path(sys.argv[1])
if (vendor / "go_above_118.go").exists():
    print("reflect2: Go 1.18 map iteration fix already applied")
    sys.exit(0)

link = vendor / "unsafe_link.go"
text = link.read_text()
text = re.sub(
    r"// m escapes into the return value.*?func mapiterinit\(rtype unsafe.Pointer, m unsafe.Pointer\) \*hiter\n",
    "",
    text,
    flags=re.S,
)
text = re.sub(
    r"type hiter struct \{.*?\n\}",
    """type hiter struct {
	key         unsafe.Pointer
	value       unsafe.Pointer
	t           unsafe.Pointer
	h           unsafe.Pointer
	buckets     unsafe.Pointer
	bptr        unsafe.Pointer
	overflow    *[]unsafe.Pointer
	oldoverflow *[]unsafe.Pointer
	startBucket uintptr
	offset      uint8
	wrapped     bool
	B           uint8
	i           uint8
	bucket      uintptr
	checkBucket uintptr
}""",
    text,
    flags=re.S,
)
link.write_text(text)

umap = vendor / "unsafe_map.go"
text = umap.read_text()
text, n = re.subn(
    r"func \(type2 \*UnsafeMapType\) UnsafeIterate\(obj unsafe.Pointer\) MapIterator \{.*?\n\}\n",
    "",
    text,
    flags=re.S,
)
if n != 1:
    sys.exit("reflect2 fix: UnsafeIterate not found in unsafe_map.go")
umap.write_text(text)

for name in ("go_above_118.go", "go_below_118.go"):
    shutil.copy(here / name, vendor / name)
print("reflect2: Go 1.18 map iteration fix applied")
