module cbt.toolkit/tests/peers/cbtsim

go 1.24

require github.com/vmware/govmomi v0.56.0
