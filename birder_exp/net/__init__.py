"""Networks, one module per family (Birder's module names); task subpackages detection, mim, ssl."""
