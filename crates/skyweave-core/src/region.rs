//! Proximity between a caller's region and a deployment's region.
//!
//! The project ships the location of every well-known AWS, Azure and GCP
//! region (`data/regions.csv`). The round-trip time between two regions is
//! estimated from the great-circle distance: light in fibre covers about
//! 200 km per millisecond and real routes are about 1.5 times longer than the
//! great circle, so `rtt_ms = 1 + 2 * 1.5 * distance_km / 200`. Same-metro
//! regions therefore come out at about 1 ms, Virginia to Frankfurt at about
//! 100 ms. Region names are global across clouds (`eastus` and `us-east-1`
//! are both Virginia), so a caller may name any cloud's region. An estate
//! file can override any pair with a measured figure (`[[region_latency]]`).

use std::collections::HashMap;

const SHIPPED_REGIONS: &str = include_str!("../data/regions.csv");

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Proximity {
    locations: HashMap<String, Location>,
    overrides: HashMap<(String, String), f64>,
}

impl Proximity {
    /// The shipped region table, with no overrides.
    pub fn shipped() -> Proximity {
        let mut locations = HashMap::new();
        for line in SHIPPED_REGIONS.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(',').collect();
            // The shipped file is checked by a test; a bad row would be a
            // build defect, so it is skipped rather than reported at run time.
            if let [_, region, latitude, longitude, ..] = fields.as_slice() {
                if let (Ok(latitude), Ok(longitude)) = (latitude.parse(), longitude.parse()) {
                    locations.insert(region.to_string(), Location { latitude, longitude });
                }
            }
        }
        Proximity { locations, overrides: HashMap::new() }
    }

    pub fn knows(&self, region: &str) -> bool {
        self.locations.contains_key(region)
    }

    pub fn set_location(&mut self, region: &str, location: Location) {
        self.locations.insert(region.to_string(), location);
    }

    /// Overrides the estimate for a pair, in both directions.
    pub fn set_rtt(&mut self, from: &str, to: &str, rtt_ms: f64) {
        self.overrides.insert((from.to_string(), to.to_string()), rtt_ms);
        self.overrides.insert((to.to_string(), from.to_string()), rtt_ms);
    }

    /// Estimated round-trip time in milliseconds, `None` when a region is unknown.
    pub fn rtt_ms(&self, from: &str, to: &str) -> Option<f64> {
        if let Some(rtt) = self.overrides.get(&(from.to_string(), to.to_string())) {
            return Some(*rtt);
        }
        if from == to {
            return Some(1.0);
        }
        let a = self.locations.get(from)?;
        let b = self.locations.get(to)?;
        Some(1.0 + 3.0 * great_circle_km(*a, *b) / 200.0)
    }
}

fn great_circle_km(a: Location, b: Location) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (lat1, lat2) = (a.latitude.to_radians(), b.latitude.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.longitude - a.longitude).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_table_parses_every_row() {
        let rows = SHIPPED_REGIONS
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
            .count();
        assert_eq!(Proximity::shipped().locations.len(), rows);
    }

    #[test]
    fn estimates() {
        let proximity = Proximity::shipped();
        let check = |from: &str, to: &str, low: f64, high: f64| {
            let rtt = proximity.rtt_ms(from, to).unwrap();
            assert!((low..=high).contains(&rtt), "{from} -> {to}: {rtt} ms");
        };
        check("us-east-1", "eastus", 1.0, 8.0);
        check("us-east-1", "us-east4", 1.0, 3.0);
        check("eastus", "westeurope", 80.0, 130.0);
        check("us-east-1", "eu-central-1", 80.0, 130.0);
        check("westeurope", "europe-west4", 1.0, 10.0);
        check("us-east-1", "ap-southeast-2", 200.0, 300.0);
        assert_eq!(proximity.rtt_ms("nowhere", "eastus"), None);
    }

    #[test]
    fn overrides_win_in_both_directions() {
        let mut proximity = Proximity::shipped();
        proximity.set_rtt("eastus", "westeurope", 70.0);
        assert_eq!(proximity.rtt_ms("westeurope", "eastus"), Some(70.0));
        proximity.set_rtt("lab", "lab-2", 0.4);
        assert_eq!(proximity.rtt_ms("lab-2", "lab"), Some(0.4));
    }
}
