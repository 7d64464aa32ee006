//go:build tools

// Package tools only records the dependency on the official operator (its main package,
// github.com/1Password/onepassword-operator/cmd, cannot be imported; build builds it by path).
package tools

import _ "github.com/1Password/onepassword-operator/pkg/onepassword"
