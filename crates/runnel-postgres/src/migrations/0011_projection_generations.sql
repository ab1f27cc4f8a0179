-- Projection generations: a rebuild of the same code makes a new generation (new tables)
-- beside the current one. `version` is the generation (the number in the tables' names);
-- `code_version` the projection's version in code it runs; `schema` its schema statements,
-- so a rebuild requested by an operator can create the tables.
ALTER TABLE __SCHEMA__.projection_versions ADD COLUMN code_version bigint;
ALTER TABLE __SCHEMA__.projection_versions ADD COLUMN schema text[];
UPDATE __SCHEMA__.projection_versions SET code_version = version;
