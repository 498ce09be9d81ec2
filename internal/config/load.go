// Loading the configuration: which file (Path), the sources merged in order
// of precedence (defaults, file, PGSIDECAR_* environment, DATABASE_URL), and
// each database's pool overrides resolved.

package config

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/structs"
	"github.com/knadh/koanf/v2"
)

// defaultConfigPath is read when it exists and no path is given.
const defaultConfigPath = "config.yaml"

// Path decides which file to read: the -config flag when given
// (must exist; "" means none), else PGSIDECAR_CONFIG (must exist), else
// ./config.yaml when it exists, else none.
func Path(flagValue string, explicit bool, environ []string) (string, error) {
	source := "-config"
	if !explicit {
		if v := lookupEnv(environ, EnvConfigPath); v != "" {
			flagValue, explicit, source = v, true, EnvConfigPath
		}
	}
	if explicit {
		if flagValue == "" {
			return "", nil
		}
		if _, err := os.Stat(flagValue); err != nil {
			return "", fmt.Errorf("config: %s %s: %w", source, flagValue, err)
		}
		return flagValue, nil
	}
	if _, err := os.Stat(defaultConfigPath); err == nil {
		return defaultConfigPath, nil
	}
	return "", nil
}

// Load reads the configuration from its sources in order of
// precedence (defaults, the YAML file at path unless path is "", PGSIDECAR_*
// variables in environ, DATABASE_URL), checks every option and returns it
// with each database's effective pool settings resolved. The error names
// the offending option.
func Load(path string, environ []string) (*Config, error) {
	cfg, err := read(path, environ)
	if err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// read merges and decodes the sources without validating the values.
func read(path string, environ []string) (*Config, error) {
	k := koanf.New(".")
	if err := k.Load(structs.Provider(Defaults(), "koanf"), nil); err != nil {
		return nil, fmt.Errorf("config: loading defaults: %w", err)
	}

	var fileKeys *koanf.Koanf
	if path != "" {
		fileKeys = koanf.New(".")
		if err := fileKeys.Load(file.Provider(path), yaml.Parser()); err != nil {
			return nil, fmt.Errorf("config: reading %s: %w", path, err)
		}
		if err := k.Merge(fileKeys); err != nil {
			return nil, fmt.Errorf("config: merging %s: %w", path, err)
		}
	}

	envKeys := koanf.New(".")
	envProvider := env.Provider(".", env.Opt{
		Prefix:        envPrefix,
		TransformFunc: envKey,
		EnvironFunc:   func() []string { return environ },
	})
	if err := envKeys.Load(envProvider, nil); err != nil {
		return nil, fmt.Errorf("config: reading %s* environment: %w", envPrefix, err)
	}
	if err := k.Merge(envKeys); err != nil {
		return nil, fmt.Errorf("config: merging %s* environment: %w", envPrefix, err)
	}

	if url := lookupEnv(environ, "DATABASE_URL"); url != "" {
		if err := k.Set("upstream", url); err != nil {
			return nil, fmt.Errorf("config: applying DATABASE_URL: %w", err)
		}
	}

	// Decode onto the defaults, not onto a zero Config, so a section the
	// file leaves empty ("pool:" with every line commented) keeps them.
	cfg := Defaults()
	var meta mapstructure.Metadata
	dc := decoderConfig(&meta)
	if err := k.UnmarshalWithConf("", &cfg, koanf.UnmarshalConf{DecoderConfig: dc}); err != nil {
		return nil, decodeError(err)
	}
	if err := unknownKeys(meta.Unused, path, fileKeys, envKeys); err != nil {
		return nil, err
	}
	cfg.FileEmpty = fileKeys != nil && len(fileKeys.Keys()) == 0
	if cfg.Auth.UsersFile != "" {
		users, err := readUsersFile(cfg.Auth.UsersFile)
		if err != nil {
			return nil, err
		}
		cfg.Auth.FileUsers = users
	}
	if err := cfg.Auth.readPasswordFiles(); err != nil {
		return nil, err
	}
	if err := cfg.resolveDatabases(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// envKey turns PGSIDECAR_POOL__MAX_SIZE into pool.max_size. Empty values
// count as unset, as docker-compose's `VAR=` usually means.
func envKey(key, value string) (string, any) {
	if key == EnvConfigPath || value == "" {
		return "", nil
	}
	name := strings.ToLower(strings.TrimPrefix(key, envPrefix))
	return strings.ReplaceAll(name, "__", "."), value
}

// envName is envKey in reverse, for error messages.
func envName(key string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "__"))
}

// lookupEnv finds name in an os.Environ-style list.
func lookupEnv(environ []string, name string) string {
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v
		}
	}
	return ""
}

// resolveDatabases computes each database's effective pool settings: the
// global pool.* values with that database's overrides decoded on top.
func (c *Config) resolveDatabases() error {
	var errs []string
	for _, name := range slices.Sorted(maps.Keys(c.Databases)) {
		db := c.Databases[name]
		db.Pool = c.Pool
		for key := range db.Overrides {
			if o, ok := option("pool." + key); ok && !o.PerDatabase {
				errs = append(errs, fmt.Sprintf("config: databases.%s.pool.%s: applies to the whole proxy; set pool.%s instead", name, key, key))
			}
		}
		if len(db.Overrides) > 0 {
			var meta mapstructure.Metadata
			dc := decoderConfig(&meta)
			dc.Result = &db.Pool
			dec, err := mapstructure.NewDecoder(dc)
			if err != nil {
				return fmt.Errorf("config: databases.%s.pool: %w", name, err)
			}
			if err := dec.Decode(db.Overrides); err != nil {
				errs = append(errs, prefixLines(decodeError(err).Error(), "config: ", "config: databases."+name+".pool."))
			}
			for _, key := range meta.Unused {
				errs = append(errs, fmt.Sprintf("config: databases.%s.pool.%s: unknown option", name, key))
			}
		}
		c.Databases[name] = db
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n"))
	}
	return nil
}
